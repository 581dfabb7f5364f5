"""Batch-1 CPU latency of two or more ``.tflite`` models, side by side, as JSON.

    python tools/bench_tflite.py --models=full.tflite,pruned.tflite --num_threads=1 --runs=200

All models are loaded in one process and timed interleaved: each round runs a block of
``--block`` invocations of every model, in a rotating order, so that a change of machine load
hits them all alike. Reports per model: median and p90 latency (ms), MACs counted from the
``.tflite`` graph itself (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED via the interpreter's
op list, see :func:`pn_tf.tflite.inspection.tflite_macs`; ``--flops`` overrides them), file
size, how XNNPACK took the graph (``xnnpack``: partitions and the op types left outside, see
:func:`pn_tf.tflite.inspection.delegation`; more than 2 partitions means ops fall back), and
against the first model: ``latency_ratio``, ``flops_ratio`` and
``efficiency = latency_reduction / flops_reduction`` (the goal for a pruned model is >= 0.9).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from pn_tf.tflite.inspection import delegation, tflite_macs  # noqa: E402
from pn_tf.tflite.timing import batch1_interpreter, time_interleaved  # noqa: E402

flags.DEFINE_list("models", None, "Comma-separated .tflite files; the first is the baseline.")
flags.DEFINE_integer("num_threads", 1, "Interpreter threads.")
flags.DEFINE_integer("runs", 200, "Timed invocations per model.")
flags.DEFINE_integer("warmup", 20, "Untimed invocations per model before timing.")
flags.DEFINE_integer("block", 10, "Consecutive invocations of one model per round.")
flags.DEFINE_list("flops", None, "Optional MACs per model (same order), instead of counting.")
flags.DEFINE_integer("seed", 0, "Seed of the random input image.")
flags.mark_flag_as_required("models")

FLAGS = flags.FLAGS
GOAL_EFFICIENCY = 0.9


def _reduction_efficiency(latency_ratio, flops_ratio):
    flops_reduction = 1.0 - flops_ratio
    if flops_reduction <= 0:
        return None
    return (1.0 - latency_ratio) / flops_reduction


def summarize(paths, times, flops, interpreters=None):
    """The JSON report: one entry per model, ratios against the first.

    ``interpreters`` (the timed ones, same order) spare reloading each file for its
    delegation report.
    """
    entries = []
    interpreters = interpreters or paths
    for path, samples, macs, interpreter in zip(paths, times, flops, interpreters):
        ms = np.asarray(samples) * 1e3
        entries.append({"model": path, "latency_ms": float(np.median(ms)),
                        "latency_p90_ms": float(np.percentile(ms, 90)), "flops": int(macs),
                        "size_bytes": os.path.getsize(path),
                        "xnnpack": delegation(interpreter)})
    base = entries[0]
    for entry in entries:
        entry["latency_ratio"] = entry["latency_ms"] / base["latency_ms"]
        entry["flops_ratio"] = entry["flops"] / base["flops"] if base["flops"] else None
        entry["size_ratio"] = entry["size_bytes"] / base["size_bytes"]
        efficiency = (None if entry["flops_ratio"] is None
                      else _reduction_efficiency(entry["latency_ratio"], entry["flops_ratio"]))
        entry["efficiency"] = efficiency
        entry["meets_goal"] = None if efficiency is None else efficiency >= GOAL_EFFICIENCY
    return entries


def main(argv):
    del argv
    paths = FLAGS.models
    if len(paths) < 2:
        print("error: --models needs two or more .tflite files", file=sys.stderr)
        return 2
    if FLAGS.flops is not None and len(FLAGS.flops) != len(paths):
        print("error: --flops needs one value per model", file=sys.stderr)
        return 2
    try:
        interpreters = [batch1_interpreter(p, FLAGS.num_threads, FLAGS.seed) for p in paths]
        flops = ([int(float(f)) for f in FLAGS.flops] if FLAGS.flops
                 else [tflite_macs(i) for i in interpreters])
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    times, share = time_interleaved(interpreters, FLAGS.runs, FLAGS.warmup, FLAGS.block, FLAGS.num_threads)
    report = {"num_threads": FLAGS.num_threads, "runs": FLAGS.runs, "batch_size": 1, "cpu_share": share,
              "flops_source": "--flops" if FLAGS.flops else "tflite_graph",
              "goal_efficiency": GOAL_EFFICIENCY,
              "models": summarize(paths, times, flops, interpreters)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    app.run(main)
