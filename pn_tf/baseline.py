"""The baseline stage: train the unpruned network, or load a given or shipped checkpoint.

The baseline is trained on ``train_main`` (the training set minus the held-out split),
so the held-out images used by the search and for model selection were never seen by
its weights. Test accuracy is reported, never used to choose anything.
"""

import os

from pn_tf.training import evaluate_splits, train_and_evaluate

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the architecture."""


def shipped_weights(arch, dataset):
    """Path of the baseline shipped in ``pn_tf/pretrained`` for (arch, dataset), or None."""
    path = os.path.join(PRETRAINED_DIR, f"{arch}_{dataset}.weights.h5")
    return path if os.path.exists(path) else None


def resolve_weights(spec, arch, dataset, flag="baseline_weights"):
    """``spec``: "" (none), "shipped", or a path to a ``.weights.h5`` file given as ``--flag``."""
    if not spec:
        return None
    if spec == "shipped":
        path = shipped_weights(arch, dataset)
        if path is None:
            raise CheckpointError(
                f"--{flag}=shipped: no shipped baseline for {arch} on {dataset} (looked in "
                f"{PRETRAINED_DIR}); train one with --baseline_weights= (empty) or pass a .weights.h5 path")
        return path
    if not os.path.isfile(spec):
        raise CheckpointError(f"--{flag}={spec}: no such file")
    return spec


def record_path(weights_path):
    """Where the ``.json`` record of ``<name>.weights.h5`` lives: ``<name>.json`` beside it."""
    return os.path.splitext(os.path.splitext(weights_path)[0])[0] + ".json"


def weights_record(path):
    """The ``.json`` record shipped beside a ``.weights.h5`` file (recipe, accuracy), or None."""
    import json

    try:
        with open(record_path(path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_checked(model, path):
    """Loads ``path`` into ``model`` or raises a CheckpointError saying why it does not fit."""
    try:
        model.load_weights(path)
    except Exception as err:  # h5py/Keras raise several types for corrupt or mismatched files
        raise CheckpointError(
            f"cannot load {path} into {model.name}: {type(err).__name__}: {str(err)[:300]}. "
            "Is it a checkpoint of this architecture, input size and class count?") from err
    return model


def baseline_stage(model, dataset, workdir, config, weights=None, init=None, batch_size=128,
                   data_dir=None, seed=0, take=None, eval_take=None, verbose=2):
    """Loads ``weights`` (then only evaluates) or trains; returns the stage summary.

    ``init``: weights to start training from instead of a random initialization (continuing a
    trained baseline with a new schedule, e.g. a warm restart). Its shipped record, if any, is
    kept in the summary under ``init`` so the whole recipe stays on record.
    """
    if weights:
        load_checked(model, weights)
        summary = evaluate_splits(model, dataset, data_dir, eval_take)
        summary.update(source=os.path.abspath(weights), trained=False)
        return summary
    if init:
        load_checked(model, init)
    summary = train_and_evaluate(model, dataset, workdir, config, "baseline", batch_size=batch_size,
                                 data_dir=data_dir, seed=seed, take=take, eval_take=eval_take,
                                 verbose=verbose)
    summary.update(trained=True)
    if init:
        summary["init"] = {"weights": os.path.abspath(init), "record": weights_record(init)}
    return summary
