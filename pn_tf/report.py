"""The report stage: one JSON and one Markdown page summarising a run.

FLOPs reduction is measured on the exported float32 TFLite files (MACs counted from
their graphs); latency is batch-1 TFLite latency of the baseline and the pruned file,
measured interleaved in this process.
"""

import os

from pn_tf.io import atomic_path, write_json


def build_report(pipe):
    from pn_tf import export as export_lib

    c = pipe.config
    base, ext, fine = pipe.summary("baseline"), pipe.summary("extract"), pipe.summary("finetune")
    exported = pipe.summary("export")
    files = exported["artifacts"]
    base_tfl = files["baseline"]["tflite_float32"]["path"]
    pruned_tfl = files["pruned"]["tflite_float32"]["path"]
    latency = export_lib.measure_latency([base_tfl, pruned_tfl], num_threads=c.tflite_threads,
                                         runs=c.tflite_runs)
    base_macs, pruned_macs = export_lib.tflite_macs(base_tfl), export_lib.tflite_macs(pruned_tfl)
    accuracy = exported["tflite_test_accuracy"]
    report = {
        "arch": c.arch,
        "dataset": c.dataset,
        "input_size": c.input_size,
        "target_flops_reduction": c.target_flops_reduction,
        "flops_reduction": 1.0 - pruned_macs / base_macs,
        "baseline": {
            "accuracy": base["accuracy"],
            "holdout_accuracy": base["holdout_accuracy"],
            "flops": base_macs,
            "params": base["params"],
            "tflite_ms": latency[base_tfl]["median_ms"],
            "tflite_float32_accuracy": accuracy.get("baseline_tflite_float32"),
            "tflite_int8_accuracy": accuracy.get("baseline_tflite_int8"),
        },
        "pruned": {
            "accuracy": fine["accuracy"],
            "holdout_accuracy": fine["holdout_accuracy"],
            "accuracy_before_finetune_holdout": ext["holdout_accuracy_before_finetune"],
            "flops": pruned_macs,
            "params": ext["params"],
            "widths": ext["widths"],
            "tflite_ms": latency[pruned_tfl]["median_ms"],
            "tflite_float32_accuracy": accuracy.get("pruned_tflite_float32"),
            "tflite_int8_accuracy": accuracy.get("pruned_tflite_int8"),
        },
        "latency_reduction": 1.0 - latency[pruned_tfl]["median_ms"] / latency[base_tfl]["median_ms"],
        "tflite_threads": c.tflite_threads,
        "latency_cpu_share": latency[base_tfl]["cpu_share"],
        "equivalence_max_abs_diff": ext["equivalence_max_abs_diff"],
        # Extract summaries written before 2026-12-01 lack it; the absolute difference (a scale
        # of 1, the least there is) bounds it from above.
        "equivalence_max_rel_diff": ext.get("equivalence_max_rel_diff",
                                            ext["equivalence_max_abs_diff"]),
        "export_max_abs_diff": {f"{who}_{kind}": info["max_abs_diff"]
                                for who, kinds in files.items() for kind, info in kinds.items()},
        "artifacts": {f"{who}_{kind}": info["path"] for who, kinds in files.items()
                      for kind, info in kinds.items()},
        "search": {k: v for k, v in pipe.summary("search").items() if k != "recipe"},
        "stages_seconds": {s: pipe.summary(s).get("stage_seconds") for s in
                           ("baseline", "search", "extract", "finetune", "export")},
        "eval_take": c.eval_take,
    }
    write_json(os.path.join(pipe.workdir, "report.json"), report)
    with atomic_path(os.path.join(pipe.workdir, "report.md")) as tmp:
        with open(tmp, "w") as f:
            f.write(markdown(report))
    return {"report": os.path.join(pipe.workdir, "report.json")}


def markdown(r):
    b, p = r["baseline"], r["pruned"]
    rows = [
        ("test accuracy", f"{b['accuracy']:.4f}", f"{p['accuracy']:.4f}"),
        ("held-out accuracy", f"{b['holdout_accuracy']:.4f}", f"{p['holdout_accuracy']:.4f}"),
        ("MACs (TFLite graph)", f"{b['flops'] / 1e6:,.2f}M", f"{p['flops'] / 1e6:,.2f}M"),
        ("parameters", f"{b['params']:,}", f"{p['params']:,}"),
        (f"TFLite float32 batch-1 latency ({r['tflite_threads']} thread)", f"{b['tflite_ms']:.2f} ms",
         f"{p['tflite_ms']:.2f} ms"),
        ("TFLite float32 test accuracy", _fmt(b["tflite_float32_accuracy"]), _fmt(p["tflite_float32_accuracy"])),
        ("TFLite int8 test accuracy", _fmt(b["tflite_int8_accuracy"]), _fmt(p["tflite_int8_accuracy"])),
    ]
    lines = [
        f"# pn-tf report: {r['arch']} on {r['dataset']}",
        "",
        f"Target FLOPs reduction {r['target_flops_reduction']:.1%}; measured on the exported model "
        f"**{r['flops_reduction']:.1%}**; latency reduction {r['latency_reduction']:.1%}.",
        f"Extracted vs hard-gated max abs difference: {r['equivalence_max_abs_diff']:.2e} "
        f"({r['equivalence_max_rel_diff']:.1e} of the logit scale).",
        "",
        "| | baseline | pruned |",
        "|---|---|---|",
        *[f"| {name} | {x} | {y} |" for name, x, y in rows],
        "",
        f"Kept widths per group: {p['widths']}",
    ]
    from pn_tf.export import busy_timing_warning

    warning = busy_timing_warning(r.get("latency_cpu_share", 1.0))
    if warning:
        lines += ["", f"**Warning:** {warning}."]
    if r.get("eval_take"):
        lines += ["", f"Accuracies measured on the first {r['eval_take']} images of each split (--eval_take)."]
    lines += ["", "Artifacts:", *[f"- {k}: `{v}`" for k, v in r["artifacts"].items()], ""]
    return "\n".join(lines)


def _fmt(value):
    return "n/a" if value is None else f"{value:.4f}"
