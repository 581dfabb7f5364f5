"""Weight checkpoints: the baselines shipped in ``pn_tf/pretrained``, given paths, checked loading."""

import os

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
