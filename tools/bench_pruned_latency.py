"""TFLite batch-1 CPU latency of unpruned vs pruned zoo models at a FLOPs budget.

    python tools/bench_pruned_latency.py --archs=resnet56,mobilenetv2 --round_to=1,8 \\
        --quantizations=float32,int8 --num_threads=1 --json

For each architecture:

1. build the zoo model (``pn_tf.models.build_model``) at its input size (CIFAR models 32,
   ImageNet-style models 224, or ``--input_size``);
2. give it realistic BatchNorm statistics: ``--bn_images`` real training images (CIFAR-10 for
   the CIFAR models, imagenette otherwise) are run through it in training mode with each BN's
   momentum set so that its moving mean/variance become the average of the batch statistics
   (``--bn_images=0`` randomizes them instead, and needs no data). The conv weights stay at
   their initialisation, except for a shipped baseline (``pn_tf/pretrained``, used when
   present and ``--use_shipped``). Latency does not depend on the weight values; int8
   calibration only needs sane activations;
3. score every channel of every prunable group by the L1 norm of its producing filters
   (summed over the producers of a tied group), standardized within the group (z-score) so
   that one global threshold compares groups of different fan-in. This is the classic
   "smallest-L1-filters" selection; on the initial weights it gives close to uniform keep
   ratios per group, which is also what a width-uniform pruning would do;
4. choose channels with ``select_channels(FlopsModel(model), scores, target_flops_reduction,
   round_to)`` (one selection per ``--target_flops_reduction`` and ``--round_to`` value;
   with several targets the models are named ``pruned_t<percent>_r<round_to>``) and build the
   narrow model with
   ``extract_model``. The unpruned reference is ``extract_model`` with every channel kept:
   the same network, gates stripped;
5. export every model to TFLite (float32; int8 full-integer with float I/O, calibrated on
   ``--calibration_images`` training images at the model's input size, see
   :func:`pn_tf.tflite.calibration.representative_dataset`);
6. per (architecture, quantization), time the unpruned model and its pruned versions
   interleaved in this one process (:func:`pn_tf.tflite.timing.batch1_interpreter` /
   :func:`pn_tf.tflite.timing.time_interleaved`; a change of machine load hits all alike) at
   batch 1 with ``--num_threads`` interpreter threads.

Reported per row: MACs counted from the ``.tflite`` graph
(:func:`pn_tf.tflite.inspection.tflite_macs`),
``flops_reduction``, median and p90 latency, ``latency_reduction``,
``efficiency = latency_reduction / flops_reduction`` (goal >= 0.9), parameters of the Keras
model and the ``.tflite`` file size. ``--json`` prints one JSON object to stdout; otherwise a
table. The number of timed runs per group is ``--runs``, capped so that one group takes about
``--group_seconds`` (never fewer than ``--min_runs``), so slow models get fewer runs.

A sweep (``--target_flops_reduction=0.25,0.5,0.75``) also fits, per (architecture,
quantization), ``latency = fixed_ms + ms_per_gmac * GMACs`` by least squares over the full and
pruned models (``fits`` in the JSON): ``fixed_share = fixed_ms / latency_full`` is the part of
the latency that does not shrink with the channels, and ``1 - fixed_share`` is the efficiency
any pruning of this kind would have if latency were exactly affine in MACs.

    python tools/bench_pruned_latency.py --target_flops_reduction=0.25,0.5,0.75 \
        --quantizations=float32,int8 --json
"""

import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pn_tf  # noqa: E402,F401 -- first, so TensorFlow starts with pn-tf's defaults (oneDNN on)

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

DEFAULT_ARCHS = ["resnet56", "mobilenetv2_cifar", "shufflenetv2plus_small",
                 "shufflenetv2plus_large", "mobilenetv2"]
CIFAR_ARCHS = ("resnet56", "mobilenetv2_cifar")
GOAL_EFFICIENCY = 0.9

FLAGS = flags.FLAGS


def define_flags():
    """The command line (defined only when run as a script, so tests can import this file)."""
    flags.DEFINE_list("archs", DEFAULT_ARCHS, "Zoo architectures to measure.")
    flags.DEFINE_integer("num_classes", None,
                         "Classifier width for every arch (default: per arch, CIFAR 10, ImageNet "
                         "1000; 10 is the imagenette models pn-tf trains).")
    flags.DEFINE_integer("input_size", None,
                         "Square input side for every arch (default: per arch, CIFAR 32, else 224).")
    flags.DEFINE_list("target_flops_reduction", ["0.5"],
                      "Fraction(s) of the MACs to remove. Several values give a sweep: one pruned "
                      "model per value (and --round_to), and an affine fit of latency on MACs.")
    flags.DEFINE_list("round_to", ["1"],
                      "Round each group's kept count to a multiple of this ('tile': per group the "
                      "largest power of two <= min(32, size / 2)); several values give several "
                      "pruned models, timed together with the same unpruned one.")
    flags.DEFINE_list("quantizations", ["float32", "int8"], "TFLite variants: float32, float16, int8.")
    flags.DEFINE_integer("num_threads", 1, "LiteRT interpreter threads.")
    flags.DEFINE_integer("runs", 200, "Timed invocations per model (at most; see --group_seconds).")
    flags.DEFINE_integer("min_runs", 30, "Timed invocations per model at least (if --runs allows).")
    flags.DEFINE_float("group_seconds", 60.0,
                       "Approximate timing budget per (arch, quantization) group; caps --runs.")
    flags.DEFINE_integer("warmup", 10, "Untimed invocations per model before timing.")
    flags.DEFINE_integer("block", 10, "Consecutive invocations of one model per round.")
    flags.DEFINE_integer("bn_images", 128,
                         "Real images used to set BN moving statistics (0: random statistics).")
    flags.DEFINE_integer("calibration_images", 64, "Images for int8 calibration.")
    flags.DEFINE_bool("use_shipped", True, "Load a shipped baseline from pn_tf/pretrained if any.")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
    flags.DEFINE_string("out_dir", None, "Where to keep the .tflite files (default: a temp dir, "
                        "removed at the end).")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR).")
    flags.DEFINE_integer("seed", 0, "Seed for random BN statistics and the timing input.")


def dataset_for(arch):
    return "cifar10" if arch in CIFAR_ARCHS else "imagenette"


def _batches(dataset, count, size, batch_size, data_dir):
    from pn_tf.tflite.calibration import representative_dataset

    return representative_dataset(dataset, num_images=count, batch_size=batch_size,
                                  image_size=size, data_dir=data_dir)


def set_bn_statistics(model, dataset, count, size, data_dir, seed=0):
    """Moving mean/variance of every BN = the mean of its batch statistics on real images.

    With ``count == 0`` they are drawn at random instead (mean ~ N(0, 0.3), var ~ U(0.5, 1.5)).
    """
    import keras

    from pn_tf.training import set_bn_statistics as from_batches

    if count <= 0:
        bns = [layer for layer in model.layers
               if isinstance(layer, keras.layers.BatchNormalization)]
        rng = np.random.default_rng(seed)
        for bn in bns:
            gamma, beta, mean, var = bn.get_weights()
            bn.set_weights([gamma, beta, rng.normal(0, 0.3, mean.shape).astype(mean.dtype),
                            rng.uniform(0.5, 1.5, var.shape).astype(var.dtype)])
        return "random"
    from_batches(model, _batches(dataset, count, size, 32, data_dir))
    return f"{count} {dataset} training images, training-mode batch statistics"


def _export(model, directory, name, quantizations, representative):
    from pn_tf.export import export_saved_model, export_tflite

    saved = os.path.join(directory, f"{name}_saved_model")
    export_saved_model(model, saved)
    paths = {}
    for q in quantizations:
        paths[q] = export_tflite(saved, os.path.join(directory, f"{name}_{q}.tflite"), q,
                                 representative if q == "int8" else None)
    shutil.rmtree(saved, ignore_errors=True)
    return paths


def _time_group(paths, num_threads, runs, min_runs, group_seconds, warmup, block, seed):
    """Interleaved batch-1 times (seconds) of ``paths``; runs capped by ``group_seconds``."""
    from pn_tf.tflite.timing import batch1_interpreter, time_interleaved

    interpreters = [batch1_interpreter(p, num_threads, seed) for p in paths]
    per_round = 0.0
    for interpreter in interpreters:  # warm-up, timed once to size the measurement
        for _ in range(max(1, warmup)):
            start = time.perf_counter()
            interpreter.invoke()
        per_round += time.perf_counter() - start
    runs = int(max(min(min_runs, runs), min(runs, group_seconds / max(per_round, 1e-6))))
    times, _ = time_interleaved(interpreters, runs, warmup=0, block=block, num_threads=num_threads)
    return times, runs


def variant_name(target, round_to, targets):
    """``pruned_r8``, or ``pruned_t50_r8`` when several targets are swept."""
    return f"pruned_r{round_to}" if len(targets) == 1 else f"pruned_t{target * 100:g}_r{round_to}"


def affine_fit(flops, latency_ms):
    """Least-squares ``latency = fixed_ms + ms_per_gmac * GMACs`` over one group's models.

    If latency were exactly affine in MACs, pruning any fraction of the MACs would have the
    efficiency ``1 - fixed_ms / latency_full``: the fixed part (ops whose time does not shrink
    with the channels: the stem, the classifier, additions, pooling, per-op overhead) is what
    keeps a pruned model's latency reduction below its FLOPs reduction. None with fewer than
    three distinct MAC counts.
    """
    flops = np.asarray(flops, dtype=np.float64) / 1e9
    latency_ms = np.asarray(latency_ms, dtype=np.float64)
    if len(np.unique(flops)) < 3:
        return None
    slope, fixed = np.polyfit(flops, latency_ms, 1)
    predicted = fixed + slope * flops
    total = ((latency_ms - latency_ms.mean()) ** 2).sum()
    r2 = 1.0 - ((latency_ms - predicted) ** 2).sum() / total if total > 0 else 1.0
    full = latency_ms[int(np.argmax(flops))]
    return {"fixed_ms": float(fixed), "ms_per_gmac": float(slope), "r2": float(r2),
            "fixed_share": float(fixed / full), "implied_efficiency": float(1.0 - fixed / full)}


def measure_arch(arch, directory, *, input_size, num_classes=None, targets, round_tos, quantizations, num_threads,
                 runs, min_runs, group_seconds, warmup, block, bn_images, calibration_images,
                 use_shipped, data_dir, seed):
    from pn_tf.checkpoints import load_checked, shipped_weights
    from pn_tf.tflite.inspection import tflite_macs
    from pn_tf.extract import extract_model, filter_l1_scores, select_channels
    from pn_tf.graph import ChannelGraph, FlopsModel, count_params
    from pn_tf.models import ARCHITECTURES, build_model

    started = time.time()
    size = int(input_size or ARCHITECTURES[arch][1])
    dataset = dataset_for(arch)
    classes = int(num_classes or ARCHITECTURES[arch][2])
    model = build_model(arch, input_size=size, num_classes=classes)
    weights = "initial (random)"
    default_shape = (size, classes) == tuple(ARCHITECTURES[arch][1:3])
    shipped = shipped_weights(arch, dataset) if use_shipped and default_shape else None
    if shipped:
        load_checked(model, shipped)
        weights, bn = f"shipped {os.path.basename(shipped)}", "from the checkpoint"
    else:
        bn = set_bn_statistics(model, dataset, bn_images, size, data_dir, seed)
    graph = ChannelGraph(model)
    flops = FlopsModel(graph)
    scores = filter_l1_scores(model, graph)
    representative = None
    if "int8" in quantizations:
        batches = _batches(dataset, calibration_images, size, 16, data_dir)
        representative = [np.asarray(images) for images, _ in batches]

    variants = {"full": ([np.ones(g.size, bool) for g in graph.groups], None, None)}
    skipped = []
    for target in targets:
        for r in round_tos:
            try:
                keep = select_channels(flops, scores, target, round_to=r).keep
            except ValueError as err:  # e.g. more than the prunable share of the MACs
                logging.warning("%s: skipping target %g, round_to %s: %s", arch, target, r, err)
                skipped.append({"target": target, "round_to": r, "reason": str(err)})
                continue
            variants[variant_name(target, r, targets)] = (keep, r, target)
    models = {}
    for name, (keep, round_to, target) in variants.items():
        narrow = extract_model(model, keep, graph, name=f"{arch}_{name}")
        paths = _export(narrow, directory, f"{arch}_{size}_{name}", quantizations, representative)
        models[name] = {"paths": paths, "params": count_params(narrow),
                        "keras_flops": int(round(flops.count([k.sum() for k in keep]))),
                        "round_to": round_to, "target": target,
                        "kept_channels": int(sum(k.sum() for k in keep)),
                        "total_channels": int(sum(len(k) for k in keep))}
        del narrow
    logging.info("%s: built and exported %d models in %.0f s", arch, len(models),
                 time.time() - started)

    rows, fits = [], []
    names = list(models)
    for q in quantizations:
        paths = [models[n]["paths"][q] for n in names]
        macs = [tflite_macs(p) for p in paths]
        times, used_runs = _time_group(paths, num_threads, runs, min_runs, group_seconds, warmup,
                                       block, seed)
        base_ms = float(np.median(times[0]) * 1e3)
        for name, path, mac, samples in zip(names, paths, macs, times):
            ms = np.asarray(samples) * 1e3
            flops_reduction = 1.0 - mac / macs[0]
            latency_reduction = 1.0 - float(np.median(ms)) / base_ms
            efficiency = latency_reduction / flops_reduction if flops_reduction > 0 else None
            rows.append({
                "arch": arch, "input_size": size, "quantization": q, "model": name,
                "round_to": models[name]["round_to"], "target": models[name]["target"],
                "flops": int(mac),
                "keras_flops": models[name]["keras_flops"],
                "flops_reduction": flops_reduction,
                "latency_ms": float(np.median(ms)), "latency_p90_ms": float(np.percentile(ms, 90)),
                "latency_reduction": latency_reduction, "efficiency": efficiency,
                "meets_goal": None if efficiency is None else efficiency >= GOAL_EFFICIENCY,
                "params": models[name]["params"], "size_bytes": os.path.getsize(path),
                "kept_channels": models[name]["kept_channels"],
                "total_channels": models[name]["total_channels"], "runs": used_runs,
                "tflite": path})
        group = [r for r in rows if r["quantization"] == q]
        fit = affine_fit([r["flops"] for r in group], [r["latency_ms"] for r in group])
        if fit:
            fits.append(dict(quantization=q, **fit))
    return {"arch": arch, "input_size": size, "num_classes": classes, "dataset": dataset, "weights": weights,
            "bn_statistics": bn, "seconds": round(time.time() - started, 1), "rows": rows,
            "fits": fits, "skipped": skipped}


def format_table(results):
    header = ("arch", "in", "quant", "model", "MMACs", "flops_red", "median_ms", "p90_ms",
              "lat_red", "eff", "params", "size_KB", "runs")
    lines = [header]
    for result in results:
        for r in result["rows"]:
            pruned = r["efficiency"] is not None
            lines.append((
                r["arch"], str(r["input_size"]), r["quantization"], r["model"],
                f"{r['flops'] / 1e6:.2f}", f"{r['flops_reduction']:.1%}" if pruned else "-",
                f"{r['latency_ms']:.3f}", f"{r['latency_p90_ms']:.3f}",
                f"{r['latency_reduction']:.1%}" if pruned else "-",
                (f"{r['efficiency']:.2f}" + ("" if r["meets_goal"] else " MISS")) if pruned else "-",
                f"{r['params']:,}", f"{r['size_bytes'] / 1024:.0f}", str(r["runs"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    for result in results:
        for skip in result["skipped"]:
            out.append(f"{result['arch']}: target {skip['target']:g} skipped ({skip['reason']})")
        for fit in result["fits"]:
            out.append(f"{result['arch']} {fit['quantization']}: latency ~ {fit['fixed_ms']:.3f} ms + "
                       f"{fit['ms_per_gmac']:.2f} ms/GMAC (R^2 {fit['r2']:.3f}); fixed share "
                       f"{fit['fixed_share']:.1%} -> implied efficiency {fit['implied_efficiency']:.2f}")
    return "\n".join(out)


def main(argv):
    del argv
    import keras  # noqa: F401  (imported before timing starts)

    from pn_tf.tflite.convert import QUANTIZATIONS
    from pn_tf.models import ARCHITECTURES

    for arch in FLAGS.archs:
        if arch not in ARCHITECTURES:
            print(f"error: unknown arch {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}",
                  file=sys.stderr)
            return 2
    for q in FLAGS.quantizations:
        if q not in QUANTIZATIONS:
            print(f"error: unknown quantization {q!r}; known: {QUANTIZATIONS}", file=sys.stderr)
            return 2
    try:  # integers first, then "tile" (per-group multiples, pn_tf.extract.tile_multiples)
        round_tos = sorted({int(r) for r in FLAGS.round_to if r != "tile"})
        round_tos += ["tile"] if "tile" in FLAGS.round_to else []
    except ValueError:
        round_tos = [0]
    try:
        targets = sorted({float(t) for t in FLAGS.target_flops_reduction})
    except ValueError:
        targets = [-1.0]
    if not all(0.0 < t < 1.0 for t in targets) or not all(r == "tile" or r >= 1 for r in round_tos):
        print("error: --target_flops_reduction must be in (0, 1) and --round_to integers >= 1 "
              "or 'tile'",
              file=sys.stderr)
        return 2
    data_dir = FLAGS.data_dir or os.environ.get("TFDS_DATA_DIR")
    keep_files = FLAGS.out_dir is not None
    directory = FLAGS.out_dir or tempfile.mkdtemp(prefix="pn_tf_latency_")
    os.makedirs(directory, exist_ok=True)
    load_before = os.getloadavg()
    started = time.time()
    started_at = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results = []
    try:
        for arch in FLAGS.archs:
            results.append(measure_arch(
                arch, directory, input_size=FLAGS.input_size, num_classes=FLAGS.num_classes,
                targets=targets,
                round_tos=round_tos, quantizations=FLAGS.quantizations,
                num_threads=FLAGS.num_threads, runs=FLAGS.runs, min_runs=FLAGS.min_runs,
                group_seconds=FLAGS.group_seconds, warmup=FLAGS.warmup, block=FLAGS.block,
                bn_images=FLAGS.bn_images, calibration_images=FLAGS.calibration_images,
                use_shipped=FLAGS.use_shipped, data_dir=data_dir, seed=FLAGS.seed))
    finally:
        if not keep_files:
            shutil.rmtree(directory, ignore_errors=True)
    try:
        from importlib.metadata import version
        litert = version("ai-edge-litert")
    except Exception:  # pragma: no cover
        litert = None
    import tensorflow as tf

    report = {
        "date": started_at,
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or
                    platform.machine(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "tensorflow": tf.__version__, "ai_edge_litert": litert,
        "num_threads": FLAGS.num_threads, "batch_size": 1,
        "target_flops_reduction": targets[0] if len(targets) == 1 else targets,
        "round_to": round_tos,
        "goal_efficiency": GOAL_EFFICIENCY, "flops_source": "tflite_graph",
        "tflite_dir": directory if keep_files else None,
        "seconds": round(time.time() - started, 1), "results": results,
    }
    if FLAGS.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(results))
        misses = [f"{r['arch']}/{r['quantization']}/{r['model']} ({r['efficiency']:.2f})"
                  for res in results for r in res["rows"] if r["meets_goal"] is False]
        print(f"\nefficiency = latency_reduction / flops_reduction; goal >= {GOAL_EFFICIENCY}. "
              f"{'Misses: ' + ', '.join(misses) if misses else 'All pruned rows meet it.'}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
