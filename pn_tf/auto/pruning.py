"""The one-call API: :func:`prune` runs the pipeline's search on the gated copy and extracts."""

import os

import numpy as np

from pn_tf import settings
from pn_tf.auto.insert import insert_gates
from pn_tf.graph import count_params
from pn_tf.layers import gate_layers, set_gate_mode
from pn_tf.pipeline.budgets.flops import FlopsBudget

QUICK = settings.QUICK_SEARCH


def prune(model, dataset, target_flops_reduction=FlopsBudget.target.default,
          search_epochs=QUICK["search_epochs"], batch_size=QUICK["search_batch_size"],
          predictor=settings.default("predictor"), data_dir=None, image_size=None,
          round_to=1, policy="all", exclude=(), take=None, seed=settings.default("seed"),
          gate_lr=settings.default("gate_lr"), pn_noise=settings.default("pn_noise"),
          flops_reg_weight=settings.default("flops_reg_weight"), input_range="0_255", verbose=0,
          return_summary=False, **overrides):
    """Prunes a Keras model physically with the PN search (the pipeline's search and extraction).

    Args:
        model: a built Keras model (functional or Sequential; nested sub-models such
            as a backbone inside a classifier are pruned through) that takes images in
            ``input_range`` and outputs class logits or softmax probabilities (the search
            uses the matching cross-entropy; the pruned model keeps the output it had).
            The pruned model is one flat functional model whose layers keep their
            original names.
        dataset: a TFDS name (``"cifar10"``) or a folder of class sub-folders of images
            (the pipeline's ``--image_dir``): the search runs on its held-out split, the 10%
            the pipeline holds out; or a ``tf.data`` dataset of ``(images, integer labels)``
            batches, used as it is.
        target_flops_reduction: float in (0, 1). Fraction of MACs to remove.
        search_epochs, batch_size, predictor, gate_lr, pn_noise: the search (the pipeline's
            defaults from :mod:`pn_tf.settings`, but a 5-epoch search on batches of 64).
        flops_reg_weight: w of the FLOPs regularizer (METHOD.md item 4: 2); raise it when the
            summary warns that the search ended above the FLOPs budget.
        data_dir: TFDS data directory (default ``$TFDS_DATA_DIR``).
        image_size: side of the images fed to the search (default: the model's).
        round_to: round each group's kept width to a multiple of this.
        policy, exclude, **overrides: which spaces to prune (see :func:`analyse`).
        take: use only the first ``take`` examples (smoke runs).
        input_range: the pixel range the model expects (``"0_255"``, ``"0_1"``, ``"-1_1"``;
            the pipeline's ``--input_range``) for a TFDS name or a folder.
        return_summary: also return a dict describing the result.

    Returns:
        The narrow keras.Model, or ``(model, summary)``.
    """
    import tensorflow as tf

    from pn_tf import data as data_lib
    from pn_tf.data_sources import open_data
    from pn_tf.extract import extract_at
    from pn_tf.search import SearchConfig, run_search

    FlopsBudget.target.check(target_flops_reduction)
    for name, value in (("flops_reg_weight", flops_reg_weight), ("input_range", input_range)):
        settings.OPTION[name].check(value)
    gated = insert_gates(model, policy=policy, exclude=exclude, **overrides)
    if not gate_layers(gated):
        raise ValueError(f"{model.name} has no prunable channel groups")
    size = image_size or data_lib.model_image_size(gated)
    if isinstance(dataset, tf.data.Dataset):
        train = dataset
    elif size is None:
        raise ValueError(f"{model.name} does not take square images; pass a tf.data.Dataset of "
                         "(inputs, labels) batches for its search")
    else:
        folder = isinstance(dataset, (str, os.PathLike)) and os.path.isdir(dataset)
        source = open_data(dataset="" if folder else str(dataset), image_dir=dataset if folder else "",
                           data_dir=data_dir, input_range="0_255" if input_range == "auto" else input_range,
                           image_size=size)
        train = source.batches("holdout", batch_size, training=True, image_size=size, seed=seed, take=take)
    config = SearchConfig(search_epochs=search_epochs, search_batch_size=batch_size, predictor=predictor,
                          pn_noise=pn_noise, target_reduction=target_flops_reduction,
                          gate_lr=gate_lr, flops_reg_weight=flops_reg_weight, seed=seed,
                          knobs=("search_epochs", "flops_reg_weight"))
    searched = run_search(gated, train, config, verbose=verbose)  # prints its warnings
    set_gate_mode(gated, "identity")
    extraction = extract_at(gated, target_flops_reduction, round_to=round_to)
    narrow, selection, graph = extraction.model, extraction.selection, extraction.graph
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
        "threshold_cost_ratio": searched["threshold_cost_ratio"],
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
