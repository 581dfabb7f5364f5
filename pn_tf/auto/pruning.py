"""The one-call API: :func:`prune` runs the PN search on the gated copy and extracts."""

import os

import numpy as np

from pn_tf.auto.data import image_folder_dataset
from pn_tf.auto.extract import extract_at
from pn_tf.auto.insert import insert_gates
from pn_tf.graph import count_params
from pn_tf.layers import gate_layers, set_gate_mode


def prune(model, dataset, target_flops_reduction=0.5, search_epochs=5, batch_size=64,
          predictor="gru", data_dir=None, image_size=None, round_to=1, policy="all",
          exclude=(), take=None, seed=0, gate_lr=5e-2, pn_noise=15.0, flops_reg_weight=2.0, verbose=0,
          return_summary=False, **overrides):
    """Prunes a functional Keras model physically with the PN search.

    Args:
        model: a built Keras model (functional or Sequential; nested sub-models such
            as a backbone inside a classifier are pruned through) that takes float
            pixels 0..255 and outputs class logits or softmax probabilities (the search
            uses the matching cross-entropy; the pruned model keeps the output it had).
            The pruned model is one flat functional model whose layers keep their
            original names.
        dataset: a TFDS name (``"cifar10"``: the search runs on its ``holdout``
            split), a folder of class sub-folders of images, or a ``tf.data``
            dataset of ``(images, integer labels)`` batches.
        target_flops_reduction: float in (0, 1). Fraction of MACs to remove.
        search_epochs, batch_size, predictor, gate_lr, pn_noise: the search.
        flops_reg_weight: w of the FLOPs regularizer (METHOD.md item 4: 2); raise it when the
            summary warns that the search ended above the FLOPs budget.
        data_dir: TFDS data directory (default ``$TFDS_DATA_DIR``).
        image_size: side of the images fed to the search (default: the model's).
        round_to: round each group's kept width to a multiple of this.
        policy, exclude, **overrides: which spaces to prune (see :func:`analyse`).
        take: use only the first ``take`` examples (smoke runs).
        return_summary: also return a dict describing the result.

    Returns:
        The narrow keras.Model, or ``(model, summary)``.
    """
    import tensorflow as tf

    from pn_tf import data as data_lib

    if not 0.0 < target_flops_reduction < 1.0:
        raise ValueError(f"target_flops_reduction must be in (0, 1), got {target_flops_reduction}")
    if not flops_reg_weight > 0:
        raise ValueError(f"flops_reg_weight must be positive, got {flops_reg_weight}")
    gated = insert_gates(model, policy=policy, exclude=exclude, **overrides)
    if not gate_layers(gated):
        raise ValueError(f"{model.name} has no prunable channel groups")
    size = image_size or data_lib.model_image_size(gated)
    if isinstance(dataset, tf.data.Dataset):
        train = dataset
    elif size is None:
        raise ValueError(f"{model.name} does not take square images; pass a tf.data.Dataset of "
                         "(inputs, labels) batches for its search")
    elif isinstance(dataset, (str, os.PathLike)) and os.path.isdir(dataset):
        train = image_folder_dataset(dataset, (size, size), batch_size, seed=seed, take=take)
    else:
        train = data_lib.make_dataset(str(dataset), "holdout", batch_size, training=True,
                                      image_size=size, data_dir=data_dir, seed=seed, take=take)
    from pn_tf.search import SearchConfig, run_search

    config = SearchConfig(search_epochs=search_epochs, search_batch_size=batch_size, predictor=predictor,
                          pn_noise=pn_noise, target_flops_reduction=target_flops_reduction,
                          gate_lr=gate_lr, flops_reg_weight=flops_reg_weight, seed=seed,
                          knobs=("search_epochs", "flops_reg_weight"))
    searched = run_search(gated, train, config, verbose=verbose)  # prints its warnings
    set_gate_mode(gated, "identity")
    narrow, selection, graph = extract_at(gated, target_flops_reduction, round_to=round_to)
    summary = {
        "groups": len(graph.groups),
        "widths": [int(g.size) for g in graph.groups],
        "kept_widths": selection.widths,
        "flops": selection.total_cost,
        "pruned_flops": selection.cost,
        "flops_reduction": selection.reduction,
        "params": count_params(model),
        "pruned_params": count_params(narrow),
        "search_history": searched["history"],
        "threshold_flops_ratio": searched["threshold_flops_ratio"],
        "reached_budget": searched["reached_budget"],
        "warnings": list(getattr(gated, "pn_auto_warnings", [])) + list(selection.notes)
                    + searched["warnings"],
    }
    return (narrow, summary) if return_summary else narrow


def random_gate_logits(gated, seed=0):
    """Sets every gate's logits to N(0, 1) samples (for tests and the CLI)."""
    rng = np.random.RandomState(seed)
    for gate in gate_layers(gated):
        gate.logits.assign(rng.randn(gate.channels).astype("float32"))
