"""Glue between the work directory and each stage module: load inputs, run, summarise.

Each function takes the :class:`~pn_tf.pipeline.Pipeline` and returns the stage's
summary dict (the pipeline writes it as ``<stage>/<stage>.json``).
"""

import os

import numpy as np

from pn_tf import data as data_lib
from pn_tf.pipeline import PipelineError


def _baseline_weights(pipe):
    summary = pipe.summary("baseline")
    return summary["weights"]


def baseline(pipe):
    from pn_tf.baseline import baseline_stage
    from pn_tf.graph import FlopsModel, count_params

    c = pipe.config
    model = pipe.build_model()
    workdir = pipe.stage_dir("baseline")
    summary = baseline_stage(model, c.dataset, workdir, pipe.train_config("baseline"),
                             weights=pipe.baseline_source,
                             init=pipe.baseline_init_source, batch_size=c.batch_size,
                             data_dir=c.data_dir, seed=c.seed, take=c.train_take,
                             eval_take=c.eval_take, verbose=c.verbose)
    summary["weights"] = pipe.baseline_source or os.path.join(workdir, "baseline.weights.h5")
    summary.update(flops=FlopsModel(model).total, params=count_params(model))
    return summary


def search(pipe):
    from pn_tf.baseline import load_checked
    from pn_tf.search import SearchConfig, run_search

    c = pipe.config
    if c.selection != "gates":
        print(f"[pn-tf] stage search: skipped, --selection={c.selection} ranks channels without a search",
              flush=True)
        return {"skipped": True, "selection": c.selection, "weights": _baseline_weights(pipe)}
    network = load_checked(pipe.build_model(), _baseline_weights(pipe))
    config = SearchConfig(epochs=c.search_epochs, batch_size=c.search_batch_size, predictor=c.predictor,
                          projection=c.projection, pn_noise=c.pn_noise, pn_batch_size=c.pn_batch_size,
                          target_reduction=c.target_flops_reduction, p=c.p, gate_lr=c.gate_lr,
                          reg_weight=c.flops_reg_weight, seed=c.seed, take=c.search_take)
    summary = run_search(network, c.dataset, pipe.stage_dir("search"), config, data_dir=c.data_dir,
                         strategy=pipe.strategy, verbose=c.verbose, eval_split=c.search_eval_split,
                         eval_take=c.search_eval_take or c.eval_take)
    summary["weights"] = os.path.join(pipe.stage_dir("search"), "searched.weights.h5")
    return summary


def _holdout_images(pipe, count=64):
    ds = data_lib.make_dataset(pipe.config.dataset, "holdout", count, training=False,
                               data_dir=pipe.config.data_dir, take=count,
                               image_size=pipe.config.input_size)
    return next(iter(ds))[0].numpy()


def extract(pipe):
    from pn_tf.baseline import load_checked
    from pn_tf.extract import channel_scores, extract_model, select_channels, set_gate_masks
    from pn_tf.graph import ChannelGraph, FlopsModel, count_params
    from pn_tf.io import atomic_path
    from pn_tf.layers import set_gate_mode
    from pn_tf.training import evaluate_accuracy

    c = pipe.config
    network = load_checked(pipe.build_model(), pipe.summary("search")["weights"])
    graph = ChannelGraph(network)
    flops = FlopsModel(graph)
    scores = channel_scores(c.selection, network, graph, seed=c.seed)
    selection = select_channels(flops, scores, c.target_flops_reduction, c.round_to)
    with pipe.strategy.scope():
        narrow = extract_model(network, selection.keep, graph, name=f"{c.arch}_pruned")
    set_gate_masks(network, selection.keep, graph)
    set_gate_mode(network, "mask")
    images = _holdout_images(pipe)
    gated = np.asarray(network(images))
    diff = float(np.max(np.abs(gated - np.asarray(narrow(images)))))
    # float32 resolves a logit of size s to about s * 6e-8, so the check is relative to the
    # logit scale (at least 1): a barely trained network's logits of thousands are not an error.
    scale = max(1.0, float(np.max(np.abs(gated))))
    measured = FlopsModel(narrow).total
    if abs(measured - selection.flops) > 1e-6 * selection.flops or diff > 1e-3 * scale:
        raise PipelineError(f"extraction check failed: FLOPs {measured} vs {selection.flops}, "
                            f"max abs diff {diff} at logit scale {scale}; please report this "
                            "with the workdir")
    split = {name: data_lib.make_dataset(c.dataset, name, 256, training=False, data_dir=c.data_dir,
                                         take=c.eval_take, image_size=c.input_size)
             for name in ("holdout", "test")}
    path = os.path.join(pipe.stage_dir("extract"), "pruned.keras")
    if pipe.is_chief:
        with atomic_path(path) as tmp:
            narrow.save(tmp)
    return {
        "model": path,
        "widths": selection.widths,
        "full_widths": [int(w) for w in flops.widths],
        "flops": measured,
        "baseline_flops": flops.total,
        "flops_reduction": 1.0 - measured / flops.total,
        "target_flops_reduction": c.target_flops_reduction,
        "params": count_params(narrow),
        "round_to": c.round_to,
        "equivalence_max_abs_diff": diff,
        "equivalence_logit_scale": scale,
        "equivalence_max_rel_diff": diff / scale,
        "selection": c.selection,
        "holdout_accuracy_before_finetune": evaluate_accuracy(narrow, split["holdout"]),
        "test_accuracy_before_finetune": evaluate_accuracy(narrow, split["test"]),
        "notes": selection.notes,
    }


def _load_keras(pipe, path):
    import keras

    import pn_tf.layers  # noqa: F401  (registers the custom layers)

    if not os.path.exists(path):
        raise PipelineError(f"{path} is missing; rerun the stage that writes it")
    with pipe.strategy.scope():
        return keras.saving.load_model(path, compile=False)


def finetune(pipe):
    from pn_tf.finetune import finetune_stage
    from pn_tf.io import atomic_path
    from pn_tf.training import evaluate_splits

    c = pipe.config
    model = _load_keras(pipe, pipe.summary("extract")["model"])
    workdir = pipe.stage_dir("finetune")
    if c.finetune_epochs == 0:
        summary = evaluate_splits(model, c.dataset, c.data_dir, c.eval_take)
        with atomic_path(os.path.join(workdir, "finetuned.keras")) as tmp:
            model.save(tmp)
        summary["trained"] = False
    else:
        summary = finetune_stage(model, c.dataset, workdir, pipe.train_config("finetune"),
                                 batch_size=c.batch_size, data_dir=c.data_dir, seed=c.seed,
                                 take=c.train_take, eval_take=c.eval_take, verbose=c.verbose)
    summary["model"] = os.path.join(workdir, "finetuned.keras")
    return summary


def export(pipe):
    from pn_tf import export as export_lib
    from pn_tf.baseline import load_checked

    c = pipe.config
    out = pipe.stage_dir("export")
    calibration = export_lib.representative_dataset(c.dataset, num_images=c.calibration_images,
                                                    data_dir=c.data_dir, image_size=c.input_size)
    images = _holdout_images(pipe, 32)
    pruned = _load_keras(pipe, pipe.summary("finetune")["model"])
    repair = c.int8_calibration_repair
    artifacts = {"pruned": export_lib.export_all(pruned, out, "pruned", calibration, images,
                                                 quantizations=tuple(c.tflite),
                                                 repair_calibration=repair)}
    base = load_checked(pipe.build_model(), _baseline_weights(pipe))
    artifacts["baseline"] = export_lib.export_all(base, out, "baseline", calibration, images,
                                                  quantizations=tuple(q for q in c.tflite if q != "float16"),
                                                  repair_calibration=repair)
    test = data_lib.make_dataset(c.dataset, "test", 256, training=False, data_dir=c.data_dir,
                                 take=c.eval_take, image_size=c.input_size)
    accuracy = {}
    for who, files in artifacts.items():
        for kind, info in files.items():
            if kind.startswith("tflite_"):
                accuracy[f"{who}_{kind}"] = export_lib.top1_accuracy(
                    lambda x, p=info["path"]: export_lib.tflite_predict(p, x), test)
    return {"artifacts": artifacts, "tflite_test_accuracy": accuracy,
            "int8_calibration_repair": repair}


def report(pipe):
    from pn_tf.report import build_report

    return build_report(pipe)
