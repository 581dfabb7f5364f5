"""The coverage table: which models pn-tf prunes, measured, one row per model.

Every keras.applications family and the model shapes users bring (Sequential, a nested
backbone, 1-D audio convolutions, a U-Net, ...; ``pn_tf/coverage/models.py``) at 96 px
(1-D models: 96 frames): random weights and BN statistics, gates on every prunable
space, random gate logits, extraction at a FLOPs cut, then the extracted model compared
with the gated model under hard 0/1 masks, and converted to TFLite float32.

    python tools/coverage.py --json                      # every row, one JSON object
    python tools/coverage.py --markdown=docs/coverage.md # the docs table (its only source)
    python tools/coverage.py --only=kws_conv1d,ResNet --no_tflite

Progress goes to stderr. Exit status: 0 when every row meets the bars (see ``bars``),
1 when one does not, 2 on bad arguments.
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pn_tf  # noqa: E402,F401 -- first, so TensorFlow starts with pn-tf's defaults


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object with every row")
    p.add_argument("--markdown", help="write the table as a Markdown page to this path")
    p.add_argument("--only", help="comma-separated row names (families or patterns)")
    p.add_argument("--input_size", type=int, default=96)
    p.add_argument("--target_flops_reduction", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_tflite", action="store_true", help="skip the TFLite conversion")
    return p


def rows_to_run(only=None):
    """``[(row name, kind, builder(size))]`` in table order, filtered by ``only``."""
    from pn_tf.coverage.models import APPLICATIONS, HUB, PATTERNS, application

    rows = [(family, f"keras.applications.{name}", lambda size, name=name: application(name, size))
            for family, name in APPLICATIONS.items()]
    rows += [(name, description, lambda size, build=build: build(size=size))
             for name, (build, description) in PATTERNS.items()]
    rows += [(name, description, lambda size, build=build: build(size=size))
             for name, (build, description, _) in HUB.items()]  # ImportError without keras-hub: skipped
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        unknown = sorted(set(wanted) - {name for name, _, _ in rows})
        if unknown:
            raise KeyError(", ".join(unknown))
        rows = [r for r in rows if r[0] in wanted]
    return rows


def bars(row, target):
    """The issue's bars for one row: [] if all hold, else what failed."""
    failed = []
    if row["identity_max_abs_diff"] != 0.0:
        failed.append("identity copy not exact")
    if not row["equivalent"]:
        failed.append("extracted != masked")
    if row["landing_error"] > 0.01:
        failed.append(f"FLOPs landed {row['flops_reduction']:.4f} for {target}")
    if row["opaque"]:
        failed.append(f"Keras layers left opaque: {row['opaque']}")
    if "tflite" in row and not row["tflite"] and row.get("tflite_original", True):
        failed.append("pruned model does not convert to TFLite")
    if row.get("tflite_macs") is not None and abs(row["tflite_macs"] - row["pruned_flops"]) > 0.5:
        failed.append(f"MACs {row['pruned_flops']:.0f} but the TFLite graph has {row['tflite_macs']}")
    return failed


def measure(only=None, size=96, target=0.4, seed=0, tflite=True, progress=sys.stderr):
    import keras

    from pn_tf.coverage.check import check_model, randomize_batchnorm

    rows = []
    todo = rows_to_run(only)
    for k, (name, kind, build) in enumerate(todo, 1):
        start = time.perf_counter()
        keras.utils.set_random_seed(seed)
        try:
            model = randomize_batchnorm(build(size), seed)
        except ImportError as err:  # an optional extra (keras-hub) is not installed
            print(f"[{k}/{len(todo)}] {name}: skipped ({err})", file=progress, flush=True)
            continue
        try:
            row = dict(check_model(model, target, seed=seed, tflite=tflite), row=name, kind=kind)
            row["failed"] = bars(row, target)
        except ValueError as err:  # no prunable group
            row = {"row": name, "kind": kind, "groups": 0, "failed": [str(err)], "max_abs_diff": float("nan"),
                   "flops_reduction": 0.0}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"[{k}/{len(todo)}] {name}: {row['groups']} groups, diff {row['max_abs_diff']:.1e}, "
              f"FLOPs -{row['flops_reduction']:.4f}, {'ok' if not row['failed'] else row['failed']} "
              f"({row['seconds']}s)", file=progress, flush=True)
    return rows


def _tflite_cell(row):
    if "tflite" not in row:
        return "not run"
    if row["tflite"]:
        macs = "same MACs" if abs(row["tflite_macs"] - row["pruned_flops"]) <= 0.5 else "other MACs"
        return f"yes ({row['tflite_max_abs_diff']:.1e}; {macs})"
    if not row.get("tflite_original", True):
        return "no, nor the original (" + row["tflite_error"].split(":")[0] + ")"
    return "no: " + row["tflite_error"][:60]


PIPELINE_PARAGRAPH = (
    'The pipeline table, [coverage_pipeline.md](coverage_pipeline.md), goes a step further: each '
    "row's model saved as a user's `.keras` classifier (3 classes) with a generated folder of 3 x "
    '30 images, run through the whole `python -m pn_tf.train` (baseline, search, extract, '
    'fine-tune, export, report; 1 search and 1 fine-tuning epoch, no batch-size flags) once at a '
    '40% FLOPs budget and once at a 30% int8 latency budget, with where the FLOPs and the latency '
    'landed, the exports made and the stage a run stopped in. 1-D and video rows are skipped. It '
    'is generated too; `python tools/coverage_pipeline.py` runs the rows whose results are not '
    'cached under `--out_dir` (minutes per run) and rewrites the page, `--markdown_only` rewrites '
    'it from the cache.')


def markdown(rows, command, target):
    import keras
    import tensorflow as tf

    lines = [
        "# Coverage: which models pn-tf prunes",
        "",
        "Generated by `tools/coverage.py`; do not edit by hand. Regenerate with",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Keras {keras.__version__}, TensorFlow {tf.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}. Random weights and BN statistics, gates on every prunable space "
        f"(policy `all`), random gate logits, extraction at a {target:.0%} FLOPs cut. Columns: "
        "*groups* pruned; *prunable MACs*, the share of the network's MACs in layers whose cost "
        "depends on a pruned group; *opaque*, Keras layers or `keras.ops` nodes left unanalysed "
        "(custom layers without a rule are listed by name); *extracted vs masked*, the largest "
        "output difference between the extracted model and the gated one under hard 0/1 masks, "
        "with the output scale (the bar: <= 1e-4 x max(1, scale)); *identity*, the gated copy "
        "with open gates against the original; *FLOPs cut*, the exact MAC reduction reached; "
        "*TFLite*, whether the pruned model converts to TFLite float32, with its largest "
        "difference to Keras and whether the MACs counted from the TFLite graph's convolution, "
        "transposed-convolution, fully-connected and batch-matmul ops equal pn-tf's count.",
        "",
        "| model | what | groups | prunable MACs | opaque | extracted vs masked (scale) | identity | "
        "FLOPs cut | params | TFLite float32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "identity_max_abs_diff" not in r:  # no prunable group at all
            lines.append(f"| {r['row']} | {r['kind']} | 0 | {r['failed'][0]} | | | | | | |")
            continue
        opaque = ", ".join(r["opaque"] + [f"{n} (custom)" for n in r["opaque_custom"]]) or "none"
        identity = "exact" if r["identity_max_abs_diff"] == 0 else f"{r['identity_max_abs_diff']:.1e}"
        lines.append(
            f"| {r['row']} | {r['kind']} | {r['groups']} | {r['prunable_share']:.1%} | {opaque} | "
            f"{r['max_abs_diff']:.1e} ({r['output_scale']:.3g}) | {identity} | "
            f"{r['flops_reduction']:.4f} | {r['params'] / 1e6:.2f}M -> {r['pruned_params'] / 1e6:.2f}M | "
            f"{_tflite_cell(r)} |")
    failing = [r for r in rows if r["failed"]]
    lines += ["", "Rows that miss a bar: " + ("none." if not failing else "; ".join(
        f"{r['row']}: {', '.join(r['failed'])}" for r in failing)), ""]
    notes = [r for r in rows if "tflite" in r and not r["tflite"] and not r.get("tflite_original", True)]
    if notes:
        lines += ["Conversions that fail for the unpruned model too are TFLite's limits, not pruning's: "
                  + "; ".join(f"{r['row']}: {r['tflite_error']}" for r in notes), ""]
    lines += [PIPELINE_PARAGRAPH, ""]
    return "\n".join(lines)


def main(argv=None):
    args = _parser().parse_args(argv)
    if not 0.0 < args.target_flops_reduction < 1.0:
        print(f"coverage: error: --target_flops_reduction must be in (0, 1), got "
              f"{args.target_flops_reduction}", file=sys.stderr)
        return 2
    try:
        rows_to_run(args.only)
    except KeyError as err:
        print(f"coverage: error: unknown rows in --only: {err.args[0]}; known: "
              f"{', '.join(name for name, _, _ in rows_to_run())}", file=sys.stderr)
        return 2
    rows = measure(args.only, args.input_size, args.target_flops_reduction, args.seed,
                   tflite=not args.no_tflite)
    command = "python tools/coverage.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.markdown:
        from pn_tf.io import atomic_path

        with atomic_path(args.markdown) as tmp:
            with open(tmp, "w") as f:
                f.write(markdown(rows, command.strip(), args.target_flops_reduction))
    if args.json:
        print(json.dumps({"command": command.strip(), "rows": rows}))
    return 1 if any(r["failed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
