"""Report: one JSON and one Markdown page summarising a run.

FLOPs reduction is measured on the exported float32 TFLite files (MACs counted from
their graphs); latency is batch-1 TFLite latency of the baseline and the pruned file,
measured interleaved in this process: float32, and also the variant the budget names
(``latency_reduction`` is that one's). Latencies and cuts are the fastest of each file's
``--tflite_runs`` runs (``latency_statistic``: :func:`pn_tf.tflite.timing.fastest_ms`; a shared
machine's interference moves medians, and a cut computed from them, by more than the budget's
tolerance); the medians are kept beside them (``tflite_median_ms``). The budget adds its own
fields and writes the first line. Paths in the report are relative to the work directory.
"""

import os

from pn_tf.io import atomic_path, write_json
from pn_tf.pipeline import artifacts
from pn_tf.pipeline.budgets import kind_of


def check(ctx):
    """Nothing of its own: it reads what the earlier stages wrote."""


def timing_image(ctx):
    """The image latencies are timed on (the first held-out image, as the model takes it): the
    report's timings and extraction's measured landing use the same, since an int8 network's
    time depends on its input (:func:`pn_tf.tflite.timing.batch1_interpreter`)."""
    return ctx.images("holdout", 1)


def run(ctx):
    from pn_tf.tflite.inspection import tflite_macs
    from pn_tf.tflite.timing import measure_latency

    c = ctx.config
    base, ext, fine = ctx.summary("baseline"), ctx.summary("extract"), ctx.summary("finetune")
    exported = ctx.summary("export")
    files = exported["artifacts"]
    base_tfl = ctx.path(files["baseline"]["tflite_float32"]["path"])
    pruned_tfl = ctx.path(files["pruned"]["tflite_float32"]["path"])
    budgeted = ctx.budget.timed_dtype
    timed = [base_tfl, pruned_tfl]
    if budgeted != "float32":
        timed += [ctx.path(files[who][f"tflite_{budgeted}"]["path"]) for who in ("baseline", "pruned")]
    latency = measure_latency(timed, num_threads=c.tflite_threads, runs=c.tflite_runs, image=timing_image(ctx))
    base_macs, pruned_macs = tflite_macs(base_tfl), tflite_macs(pruned_tfl)
    accuracy = exported["tflite_test_accuracy"]
    report = {
        "arch": ctx.model.name,
        "dataset": ctx.data.name,
        "model_file": c.model or None,
        "input_size": c.input_size,
        "input_range": c.input_range,
        "accuracy_split": ctx.data.eval_split,
        "class_names": ctx.data.class_names,
        "skipped_images": len(ctx.data.skipped),
        "skipped_image_examples": [f"{path} ({reason})" for path, reason in ctx.data.skipped[:5]],
        "flops_reduction": 1.0 - pruned_macs / base_macs,
        "baseline": {
            "accuracy": base["accuracy"],
            "holdout_accuracy": base["holdout_accuracy"],
            "flops": base_macs,
            "params": base["params"],
            "tflite_ms": latency[base_tfl]["min_ms"],
            "tflite_median_ms": latency[base_tfl]["median_ms"],
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
            "tflite_ms": latency[pruned_tfl]["min_ms"],
            "tflite_median_ms": latency[pruned_tfl]["median_ms"],
            "tflite_float32_accuracy": accuracy.get("pruned_tflite_float32"),
            "tflite_int8_accuracy": accuracy.get("pruned_tflite_int8"),
        },
        "latency_reduction": 1.0 - latency[timed[-1]]["min_ms"] / latency[timed[-2]]["min_ms"],
        "latency_dtype": budgeted,
        "latency_statistic": "min",
        "float32_latency_reduction": 1.0 - latency[pruned_tfl]["min_ms"] / latency[base_tfl]["min_ms"],
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
        "labels": exported.get("labels"),
        "search": {k: v for k, v in ctx.summary("search").items() if k not in ("recipe", "history")},
        "stages_seconds": {s: ctx.summary(s).get("stage_seconds") for s in ctx.stage_names if s != "report"},
        "eval_take": c.eval_take,
    }
    if budgeted != "float32":
        for who, path in zip(("baseline", "pruned"), timed[2:]):
            report[who][f"tflite_{budgeted}_ms"] = latency[path]["min_ms"]
            report[who][f"tflite_{budgeted}_median_ms"] = latency[path]["median_ms"]
    report.update(ctx.budget.report_fields(ext, ctx))
    path = os.path.join(ctx.workdir, artifacts.REPORT_JSON)
    write_json(path, report)
    with atomic_path(os.path.join(ctx.workdir, artifacts.REPORT_MD)) as tmp:
        with open(tmp, "w") as f:
            f.write(markdown(report))
    return {"report": ctx.relative(path)}


def headline(ctx):
    """The run's answer, for the last lines of a run: the budget asked and what landed, accuracy
    before and after, the files to deploy and the report's path."""
    import json

    with open(os.path.join(ctx.workdir, artifacts.REPORT_JSON)) as f:
        r = json.load(f)
    b, p = r["baseline"], r["pruned"]
    on = "test" if r.get("accuracy_split", "test") == "test" else "held-out"
    int8 = ""
    if p.get("tflite_int8_accuracy") is not None:
        int8 = f" (int8 TFLite {p['tflite_int8_accuracy']:.2%})"
    deploy = [r["artifacts"][key] for key in ("pruned_tflite_int8", "pruned_tflite_float16",
                                              "pruned_tflite_float32") if key in r["artifacts"]][:1]
    files = [os.path.join(ctx.workdir, path) for path in deploy + ([r["labels"]] if r.get("labels") else [])]
    return [f"[pn-tf] done: {r['arch']} on {r['dataset']}",
            f"  budget: {kind_of(r).report_line(r).replace('**', '')}",
            f"  MACs {b['flops'] / 1e6:,.2f}M -> {p['flops'] / 1e6:,.2f}M, parameters {b['params']:,} -> "
            f"{p['params']:,}, TFLite float32 latency {b['tflite_ms']:.2f} -> {p['tflite_ms']:.2f} ms",
            f"  {on} accuracy: {b['accuracy']:.2%} -> {p['accuracy']:.2%}{int8}",
            f"  files: {', '.join(files)}",
            f"  report: {os.path.join(ctx.workdir, artifacts.REPORT_MD)}"]


def markdown(r):
    b, p = r["baseline"], r["pruned"]
    split = r.get("accuracy_split", "test")
    on = "test" if split == "test" else "held-out"
    rows = [
        (f"{on} accuracy", f"{b['accuracy']:.4f}", f"{p['accuracy']:.4f}"),
        ("held-out accuracy", f"{b['holdout_accuracy']:.4f}", f"{p['holdout_accuracy']:.4f}"),
        ("MACs (TFLite graph)", f"{b['flops'] / 1e6:,.2f}M", f"{p['flops'] / 1e6:,.2f}M"),
        ("parameters", f"{b['params']:,}", f"{p['params']:,}"),
        (f"TFLite float32 batch-1 latency ({r['tflite_threads']} thread, {_statistic(r)})",
         f"{b['tflite_ms']:.2f} ms", f"{p['tflite_ms']:.2f} ms"),
        (f"TFLite float32 {on} accuracy", _fmt(b["tflite_float32_accuracy"]), _fmt(p["tflite_float32_accuracy"])),
        (f"TFLite int8 {on} accuracy", _fmt(b["tflite_int8_accuracy"]), _fmt(p["tflite_int8_accuracy"])),
    ]
    if split != "test":
        rows = rows[:1] + rows[2:]
    lines = [
        f"# pn-tf report: {r['arch']} on {r['dataset']}",
        "",
        kind_of(r).report_line(r),
        f"Extracted vs hard-gated max abs difference: {r['equivalence_max_abs_diff']:.2e} "
        f"({r['equivalence_max_rel_diff']:.1e} of the logit scale).",
        "",
        "| | baseline | pruned |",
        "|---|---|---|",
        *[f"| {name} | {x} | {y} |" for name, x, y in rows],
        "",
        f"Kept widths per group: {p['widths']}",
    ]
    from pn_tf.tflite.timing import busy_timing_warning

    warning = busy_timing_warning(r.get("latency_cpu_share", 1.0))
    if warning:
        lines += ["", f"**Warning:** {warning}."]
    if r.get("latency_table_fit_problem"):
        lines += ["", f"**Warning:** {r['latency_table_fit_problem']}: the estimated cut is less "
                  "reliable than the table's checks promise; the measured one above is what landed."]
    if split != "test":
        lines += ["", "No test split (pass --test_dir): accuracies are on the held-out 10% of "
                  "--image_dir, which also chose the pruned channels."]
    if r.get("skipped_images"):
        lines += ["", f"{r['skipped_images']} unreadable image file(s) were skipped, e.g. "
                  + "; ".join(f"`{e}`" for e in r.get("skipped_image_examples", [])[:3]) + "."]
    if r.get("eval_take"):
        lines += ["", f"Accuracies measured on the first {r['eval_take']} images of each split (--eval_take)."]
    lines += ["", "Artifacts:", *[f"- {k}: `{v}`" for k, v in r["artifacts"].items()]]
    if r.get("labels"):
        lines += [f"- class names: `{r['labels']}`"]
    lines += [""]
    return "\n".join(lines)


def _statistic(r):
    """How the report's latencies were summarized: reports before 2026-12-07 used the median."""
    return "fastest run" if r.get("latency_statistic") == "min" else "median"


def _fmt(value):
    return "n/a" if value is None else f"{value:.4f}"
