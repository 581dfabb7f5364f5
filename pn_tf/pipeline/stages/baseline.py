"""Baseline: evaluate the unpruned network, training it first when asked.

A zoo architecture is trained (``--baseline_epochs``, default 200) or loaded
(``--baseline_weights``); a ``--model`` file is evaluated with its own weights and
trained further only with ``--baseline_epochs``. Training uses ``train_main`` (the
training images minus the held-out split), so the held-out images that the search
and model selection use were never seen by weights this stage trains.
"""

import os

from pn_tf.pipeline import artifacts


def weights_of(ctx):
    """The baseline weights for later stages (None: the model file's own)."""
    return ctx.summary("baseline")["weights"]


def run(ctx):
    from pn_tf.checkpoints import load_checked, weights_record
    from pn_tf.graph import FlopsModel, count_params
    from pn_tf.io import atomic_path
    from pn_tf.training import evaluate_splits

    c = ctx.config
    network = ctx.build_network()
    workdir = ctx.stage_dir("baseline")
    if ctx.baseline_source:
        load_checked(network, ctx.baseline_source)
    if not ctx.trains_baseline:
        summary = evaluate_splits(network, ctx.data, c.eval_take)
        source = ctx.baseline_source or c.model
        summary.update(source=os.path.abspath(source), trained=False, weights=ctx.baseline_source)
    else:
        init = ctx.baseline_init_source
        if init:
            load_checked(network, init)
        summary = ctx.train(network, "baseline")
        path = os.path.join(workdir, artifacts.BASELINE_WEIGHTS)
        with atomic_path(path) as tmp:
            network.save_weights(tmp)
        summary.update(trained=True, weights=path)
        if init:
            summary["init"] = {"weights": os.path.abspath(init), "record": weights_record(init)}
        if c.model:
            summary["init"] = {"model": os.path.abspath(c.model)}
    summary.update(flops=FlopsModel(network).total, params=count_params(network))
    return summary
