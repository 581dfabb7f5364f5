"""Baseline: evaluate the unpruned network, training it first when asked.

A zoo architecture is trained (``--baseline_epochs``, default 200) or loaded
(``--baseline_weights``); a ``--model`` file is evaluated with its own weights and
trained further only with ``--baseline_epochs``. Training uses ``train_main`` (the
training images minus the held-out split), so the held-out images that the search
and model selection use were never seen by weights this stage trains.
"""

import os

from pn_tf.pipeline import artifacts
from pn_tf.pipeline.errors import PipelineError


def weights_of(ctx):
    """The baseline weights for later stages (None: the model file's own), as stored."""
    return ctx.summary("baseline")["weights"]


def trains(config):
    """Whether this run trains its baseline (else it loads or evaluates one)."""
    return not config.baseline_weights and config.baseline_epochs > 0


def _sources(ctx):
    """``(weights to load, weights to start training from)``: paths or None (zoo models only)."""
    from pn_tf.checkpoints import CheckpointError, resolve_weights

    c = ctx.config
    if c.model:
        return None, None
    try:
        if c.baseline_weights and c.baseline_init:
            raise CheckpointError(
                "--baseline_weights loads a finished baseline and --baseline_init starts training "
                "from one; pass only one of them")
        return (resolve_weights(c.baseline_weights, c.arch, c.dataset),
                resolve_weights(c.baseline_init, c.arch, c.dataset, flag="baseline_init"))
    except CheckpointError as err:
        raise PipelineError(str(err)) from err


def check(ctx):
    """Weights files that load into this architecture; one full training batch; the precision an
    interrupted training started in."""
    from pn_tf.checkpoints import CheckpointError, load_checked

    c = ctx.config
    for path in _sources(ctx):
        if path:
            try:
                load_checked(ctx.build_network(), path)
            except CheckpointError as err:
                raise PipelineError(str(err)) from err
    if trains(c):
        ctx.check_split("train_main", c.train_take, c.batch_size, "--batch_size")
    ctx.check_resume("baseline")


def run(ctx):
    from pn_tf.checkpoints import load_checked, weights_record
    from pn_tf.graph import FlopsModel, count_params
    from pn_tf.io import atomic_path
    from pn_tf.training import evaluate_splits

    c = ctx.config
    network = ctx.build_network()
    workdir = ctx.stage_dir("baseline")
    source, init = _sources(ctx)
    if source:
        load_checked(network, source)
    if not trains(c):
        summary = evaluate_splits(network, ctx.data, c.eval_take)
        summary.update(source=ctx.relative(source or c.model), trained=False,
                       weights=ctx.relative(source))
    else:
        if init:
            load_checked(network, init)
        summary = ctx.train(network, "baseline")
        path = os.path.join(workdir, artifacts.BASELINE_WEIGHTS)
        with atomic_path(path) as tmp:
            network.save_weights(tmp)
        summary.update(trained=True, weights=ctx.relative(path))
        if init:
            summary["init"] = {"weights": ctx.relative(init), "record": weights_record(init)}
        if c.model:
            summary["init"] = {"model": ctx.relative(c.model)}
    summary.update(flops=FlopsModel(network).total, params=count_params(network))
    return summary
