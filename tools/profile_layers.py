"""Where a zoo model's TFLite batch-1 time goes, layer by layer, and how much of it PN can prune.

    python tools/profile_layers.py --arch=mobilenetv2 --runs=200 [--num_classes=10] [--json]

The LiteRT Python interpreter has no per-op profiler, so each *unit* of the network is
converted and timed on its own, at its real input shape, batch 1, ``--num_threads`` threads:

* a unit (:mod:`pn_tf.latency.units`) is one layer call, plus the BatchNormalization /
  activation / ReLU / (stripped gate) Identity calls that follow a conv, depthwise conv, dense
  layer or addition and read only its output -- what the TFLite converter fuses into one op --
  and a ZeroPadding2D is timed with the convolution it feeds (XNNPACK folds a zero PAD into it);
* the units are timed in isolation, so ops that are cheap inside the whole graph but read or
  write a large tensor on their own (input normalization, concatenations) can be over- or
  understated; ``units_sum_ratio`` shows how far the sum is from the whole model;
* every unit becomes a small Keras model (its own input tensors, the same layer objects and
  weights), is converted to float32 TFLite (from a concrete function at batch 1) and timed
  interleaved with all the others (:func:`pn_tf.tflite.timing.time_interleaved`);
* the time of one invocation of a one-op model (``invoke_overhead_ms``, the interpreter's own
  cost) is subtracted from each unit's median.

Each unit is classed *gated* when the channels it reads or writes include a PN group of the
architecture (so pruning shrinks it) and *fixed* otherwise. The report gives, per class and per
layer type, the summed time and MACs, and the sum of all units against the whole model timed
in the same run (``units_sum_ratio``; above 1 when isolated ops lose the cache reuse of the
whole graph, below when they miss its data movement). The fixed share of the summed time is
the part of the latency that no choice of PN channels removes; compare it with the intercept
of ``tools/bench_pruned_latency.py``'s sweep fit.
"""

import collections
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pn_tf  # noqa: E402,F401 -- first, so TensorFlow starts with pn-tf's defaults (oneDNN on)

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from pn_tf.latency.table import time_files  # noqa: E402
from pn_tf.latency.units import (batch1_model, convert, head, overhead_model,  # noqa: E402
                                 split_units, unit_model)

FLAGS = flags.FLAGS


def define_flags():
    """The command line (defined only when run as a script, so tests can import this file)."""
    flags.DEFINE_string("arch", "mobilenetv2", "Zoo architecture.")
    flags.DEFINE_integer("input_size", None, "Square input side (default: the architecture's).")
    flags.DEFINE_integer("num_classes", None, "Classifier width (default: the architecture's).")
    flags.DEFINE_float("target_flops_reduction", 0.5,
                       "The pruned model: this fraction of the MACs removed (filter-L1 channel choice, "
                       "as tools/bench_pruned_latency.py).")
    flags.DEFINE_integer("num_threads", 1, "LiteRT interpreter threads.")
    flags.DEFINE_integer("runs", 200, "Timed invocations per unit.")
    flags.DEFINE_integer("warmup", 10, "Untimed invocations per unit first.")
    flags.DEFINE_integer("top", 15, "Slowest units listed in the table output.")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of tables.")
    flags.DEFINE_integer("seed", 0, "Seed of the random inputs.")


def gated_layers(gated_model, graph):
    """Names of the layers whose input or output channels include a PN group."""
    names = set()
    for layer in gated_model.layers:
        if layer.name not in graph._layer_atoms:
            continue
        in_atoms, out_atoms = graph.layer_atoms(layer.name)
        if any(graph.group_of_atom(a) is not None for a in tuple(in_atoms) + tuple(out_atoms)):
            names.add(layer.name)
    return names


def _unit_rows(plain, gated_names, directory, tag):
    """Converts every unit of ``plain``; returns (rows, paths)."""
    from pn_tf.graph import ChannelGraph, FlopsModel

    macs = collections.Counter()
    for layer, _, count in FlopsModel(ChannelGraph(plain)).table():
        macs[layer] += count
    rows, paths = [], []
    units = split_units(plain)
    for index, unit in enumerate(units):
        names = [node.operation.name for node in unit]
        paths.append(convert(unit_model(unit), os.path.join(directory, f"{tag}_u{index}.tflite")))
        rows.append({"layers": names, "type": type(head(unit)).__name__,
                     "output_shape": list(unit[-1].output_tensors[0].shape[1:]),
                     "macs": int(sum(macs[n] for n in names)),
                     "gated": any(n in gated_names for n in names)})
        if (index + 1) % 25 == 0:
            logging.info("%s: converted %d / %d units", tag, index + 1, len(units))
    return rows, paths


def _summary(rows, key):
    out = {}
    for row in rows:
        entry = out.setdefault(key(row), {"units": 0, "ms": 0.0, "macs": 0, "pruned_ms": 0.0,
                                          "pruned_macs": 0})
        entry["units"] += 1
        for field in ("ms", "macs", "pruned_ms", "pruned_macs"):
            entry[field] += row[field]
    total = sum(r["ms"] for r in rows)
    for entry in out.values():
        entry["share"] = entry["ms"] / total if total else 0.0
        entry["latency_kept"] = entry["pruned_ms"] / entry["ms"] if entry["ms"] else None
        entry["macs_kept"] = entry["pruned_macs"] / entry["macs"] if entry["macs"] else None
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["ms"]))


def profile(arch, input_size=None, num_classes=None, target=0.5, num_threads=1, runs=200,
            warmup=10, seed=0, directory=None):
    """The per-unit report of the full and the pruned model (see the module docstring)."""
    from pn_tf.extract import extract_model, filter_l1_scores, select_channels
    from pn_tf.graph import ChannelGraph, FlopsModel
    from pn_tf.models import build_model

    gated = build_model(arch, input_size=input_size, num_classes=num_classes)
    graph = ChannelGraph(gated)
    gated_names = gated_layers(gated, graph)
    selection = select_channels(FlopsModel(graph), filter_l1_scores(gated, graph), target)
    plains = {"full": extract_model(gated, [np.ones(g.size, bool) for g in graph.groups], graph),
              "pruned": extract_model(gated, selection.keep, graph)}
    own_dir = directory is None
    directory = directory or tempfile.mkdtemp(prefix="pn_tf_profile_")
    try:
        paths = [os.path.join(directory, f"{name}.tflite") for name in ("overhead", *plains)]
        convert(overhead_model(), paths[0])
        for name, path in zip(plains, paths[1:]):
            convert(batch1_model(plains[name]), path)
        rows, unit_paths = {}, {}
        for name, plain in plains.items():
            rows[name], unit_paths[name] = _unit_rows(plain, gated_names, directory, name)
        paths += unit_paths["full"] + unit_paths["pruned"]
        medians, _ = time_files(paths, num_threads, runs, warmup=warmup, block=5, seed=seed)
    finally:
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)
    overhead_ms, whole = medians[0], dict(zip(plains, medians[1:3]))
    unit_ms = medians[3:]
    for row, ms in zip(rows["full"] + rows["pruned"], unit_ms):
        row["ms"] = max(0.0, ms - overhead_ms)
    pruned_by_layers = {tuple(r["layers"]): r for r in rows["pruned"]}
    for row in rows["full"]:
        twin = pruned_by_layers.get(tuple(row["layers"]), {"ms": row["ms"], "macs": row["macs"]})
        row["pruned_ms"], row["pruned_macs"] = twin["ms"], twin["macs"]
    units = rows["full"]
    total = sum(r["ms"] for r in units)
    pruned_total = sum(r["pruned_ms"] for r in units)
    by_class = _summary(units, lambda r: "gated" if r["gated"] else "fixed")
    flops_reduction = selection.reduction
    latency_reduction = 1.0 - whole["pruned"] / whole["full"]
    return {"arch": arch, "input_size": int(gated.input_shape[1]),
            "num_classes": int(gated.output_shape[-1]), "num_threads": num_threads,
            "runs": runs, "target_flops_reduction": target, "flops_reduction": flops_reduction,
            "whole_model_ms": whole["full"], "whole_pruned_ms": whole["pruned"],
            "latency_reduction": latency_reduction,
            "efficiency": latency_reduction / flops_reduction,
            "invoke_overhead_ms": overhead_ms,
            "units_sum_ms": total, "units_sum_pruned_ms": pruned_total,
            "units_sum_ratio": total / whole["full"] if whole["full"] else None,
            "units_efficiency": (1.0 - pruned_total / total) / flops_reduction if total else None,
            "fixed_share": by_class.get("fixed", {"share": 0.0})["share"],
            "by_class": by_class,
            "by_type": _summary(units, lambda r: f"{r['type']} ({'gated' if r['gated'] else 'fixed'})"),
            "units": units}


def format_report(report, top):
    lines = [f"{report['arch']} @ {report['input_size']} px, {report['num_classes']} classes, "
             f"{report['num_threads']} thread(s), {report['runs']} runs.",
             f"whole model {report['whole_model_ms']:.3f} ms -> {report['whole_pruned_ms']:.3f} ms "
             f"pruned at {report['flops_reduction']:.1%} fewer MACs: efficiency "
             f"{report['efficiency']:.2f}",
             f"{len(report['units'])} units timed alone sum to {report['units_sum_ms']:.3f} -> "
             f"{report['units_sum_pruned_ms']:.3f} ms (x{report['units_sum_ratio']:.2f} of the "
             f"whole; efficiency {report['units_efficiency']:.2f}) after "
             f"{report['invoke_overhead_ms'] * 1e3:.1f} us invoke overhead each",
             f"fixed (touching no PN group) share of the summed time: {report['fixed_share']:.1%}",
             "",
             f"{'type':34s} {'units':>5s} {'ms':>8s} {'share':>6s} {'MMACs':>8s} "
             f"{'pruned ms':>9s} {'lat kept':>8s} {'MACs kept':>9s}"]
    for name, e in report["by_type"].items():
        kept = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
        lines.append(f"{name:34s} {e['units']:5d} {e['ms']:8.3f} {e['share']:6.1%} "
                     f"{e['macs'] / 1e6:8.2f} {e['pruned_ms']:9.3f} {kept(e['latency_kept']):>8s} "
                     f"{kept(e['macs_kept']):>9s}")
    lines += ["", f"slowest {top} units (full model):"]
    for row in sorted(report["units"], key=lambda r: -r["ms"])[:top]:
        lines.append(f"  {row['ms']:7.3f} -> {row['pruned_ms']:7.3f} ms  "
                     f"{'gated' if row['gated'] else 'fixed'}  {row['type']:16s} "
                     f"{str(row['output_shape']):16s} {'+'.join(row['layers'])}")
    return "\n".join(lines)


def main(argv):
    del argv
    from pn_tf.models import ARCHITECTURES

    if FLAGS.arch not in ARCHITECTURES:
        print(f"error: unknown arch {FLAGS.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}",
              file=sys.stderr)
        return 2
    if not 0.0 < FLAGS.target_flops_reduction < 1.0:
        print("error: --target_flops_reduction must be in (0, 1)", file=sys.stderr)
        return 2
    report = profile(FLAGS.arch, FLAGS.input_size, FLAGS.num_classes,
                     FLAGS.target_flops_reduction, FLAGS.num_threads, FLAGS.runs, FLAGS.warmup,
                     FLAGS.seed)
    print(json.dumps(report, indent=2) if FLAGS.json else format_report(report, FLAGS.top))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
