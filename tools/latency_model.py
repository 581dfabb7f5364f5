"""Build a latency table of a network on this device and check how well it predicts.

    python tools/latency_model.py --arch=resnet56 [--latency_dtype=int8] [--tflite_threads=1]
    python tools/latency_model.py --model=net.keras --output=net_table.json
    python tools/latency_model.py --arch=resnet56 --check --configs=20 --json

The table (pn_tf.latency.table: every unit of the gated network timed with LiteRT and XNNPACK at
16 uniform width levels, then fitted to the whole network's time) is cached under
~/.cache/pn_tf/latency (or $PN_TF_CACHE/latency), keyed by the network's structure, the
runtime, the CPU, the dtype and the thread count; ``--output`` also writes it where you say,
for ``python -m pn_tf.train --target_latency_reduction=R --latency_table=PATH`` (build it on
the device you deploy to: it needs Python, TensorFlow and this package, no data).

``--check`` then extracts ``--configs`` random width configurations, times them and the full
network interleaved in one run, and prints the estimate's errors (``mean_abs_pct_error``,
``max_abs_pct_error``; see pn_tf.latency.check; ``*_affine``: the same for the table's affine
fit of the unit sum alone). A table whose whole-network times do not grow with the width
(pn_tf.latency.fit_problem) is printed with a warning (``fit_problem`` in the JSON). Exit
status 2 on bad arguments and on a network whose units cannot be converted or timed (one line
naming the unit and the reason).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pn_tf  # noqa: E402,F401 -- first, so TensorFlow starts with pn-tf's defaults (oneDNN on)

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("arch", "", "Zoo architecture (pn_tf.models.ARCHITECTURES).")
    flags.DEFINE_string("model", "", "Or your own .keras classifier (groups by the automatic analysis).")
    flags.DEFINE_enum("prune_policy", "all", ["all", "internal"], "With --model: channel spaces to gate.")
    flags.DEFINE_integer("input_size", None, "Square input side (default: the architecture's or model's).")
    flags.DEFINE_integer("num_classes", None, "Classes of a zoo architecture (default: its own).")
    flags.DEFINE_enum("latency_dtype", "float32", ["float32", "int8"], "TFLite model timed.")
    flags.DEFINE_integer("tflite_threads", 1, "LiteRT interpreter threads.")
    flags.DEFINE_integer("levels", 16, "Uniform width levels each unit is timed at.")
    flags.DEFINE_integer("runs", 100, "Timed invocations per model.")
    flags.DEFINE_string("output", "", "Also write the table to this JSON file.")
    flags.DEFINE_bool("rebuild", False, "Build the table even if it is cached.")
    flags.DEFINE_bool("check", False, "Compare the estimate with measured random configurations.")
    flags.DEFINE_integer("configs", 20, "Random configurations of --check.")
    flags.DEFINE_integer("seed", 0, "Seed of --check's configurations.")
    flags.DEFINE_string("round_to", "1", "Round --check's widths as --round_to of pn-tf does (an int "
                        "or 'tile'): the configurations a run with that rounding selects.")
    flags.DEFINE_bool("json", False, "Print one JSON object.")


def _fail(message):
    print(f"error: {message}", file=sys.stderr)
    return 2


def gated_network():
    """The gated network of --arch or --model (raises ValueError with a one-line reason)."""
    from pn_tf.models import ARCHITECTURES
    from pn_tf.pipeline.errors import PipelineError
    from pn_tf.pipeline.models import FileModel, ZooModel

    if bool(FLAGS.arch) == bool(FLAGS.model):
        raise ValueError("pass one of --arch=NAME or --model=PATH")
    if FLAGS.arch:
        if FLAGS.arch not in ARCHITECTURES:
            raise ValueError(f"unknown --arch={FLAGS.arch}; known: {', '.join(sorted(ARCHITECTURES))}")
        return ZooModel(FLAGS.arch, FLAGS.input_size, FLAGS.num_classes, {}).build()
    try:
        return FileModel(FLAGS.model, FLAGS.prune_policy, (), FLAGS.input_size).build()
    except PipelineError as err:
        raise ValueError(str(err)) from err


def main(argv):
    del argv
    from pn_tf.graph import ChannelGraph
    from pn_tf.latency import LatencyModel, LatencyTableError, cached_table, save_table
    from pn_tf.latency.check import check

    for name in ("tflite_threads", "levels", "runs", "configs"):
        if getattr(FLAGS, name) < 1:
            return _fail(f"--{name} must be >= 1, got {getattr(FLAGS, name)}")
    if FLAGS.output and os.path.isdir(FLAGS.output):
        return _fail(f"--output={FLAGS.output} is a folder; name the JSON file to write")
    from pn_tf.pipeline.errors import PipelineError
    from pn_tf.pipeline.validation import round_to

    try:
        rounding = round_to(FLAGS.round_to)
    except PipelineError as err:
        return _fail(err)
    try:
        network = gated_network()
    except ValueError as err:
        return _fail(err)
    graph = ChannelGraph(network)
    if not graph.groups:
        return _fail(f"{network.name} has no prunable channel groups: there is no latency to budget")
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        table = cached_table(network, graph, FLAGS.latency_dtype, FLAGS.tflite_threads,
                             FLAGS.levels, FLAGS.runs, progress=say, rebuild=FLAGS.rebuild)
        if FLAGS.output:
            save_table(table, FLAGS.output)
            say(f"latency table written to {FLAGS.output}")
        latency = LatencyModel(graph, table, network)
    except LatencyTableError as err:
        return _fail(" ".join(str(err).split()))
    summary = {key: table.get(key) for key in ("network", "dtype", "num_threads", "runtime", "cpu",
                                               "distinct_units", "channel_tiles", "scale", "offset_ms",
                                               "fit_max_abs_pct_error", "cpu_share", "seconds")}
    summary.update({"estimated_ms": latency.total, "max_reduction": latency.max_reduction(),
                    "width_dependent_units": len(table["units"]),
                    "fit_problem": latency.fit_problem})
    if latency.fit_problem:
        print(f"warning: {latency.fit_problem}", file=sys.stderr, flush=True)
    if FLAGS.check:
        try:
            result = check(network, graph, latency, FLAGS.configs, FLAGS.seed, FLAGS.runs,
                           progress=say, round_to=rounding)
        except LatencyTableError as err:
            return _fail(" ".join(str(err).split()))
        summary = {**result, "table": summary}
    if FLAGS.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary.get('network', network.name)}: estimated {latency.total:.3f} ms "
              f"({FLAGS.latency_dtype}, {FLAGS.tflite_threads} thread(s)); the gated channels can cut "
              f"at most {latency.max_reduction():.1%}")
        if FLAGS.check:
            print(f"check over {FLAGS.configs} random configurations: mean abs error "
                  f"{summary['mean_abs_pct_error']:.2f}%, max {summary['max_abs_pct_error']:.2f}% "
                  f"(unanchored: {summary['mean_abs_pct_error_unanchored']:.2f}% / "
                  f"{summary['max_abs_pct_error_unanchored']:.2f}%)")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
