"""Extract: choose the kept channels on the run's budget and build the narrower model.

The narrow model must equal the gated network with hard gates at the selected channels on
held-out images, and its MACs must be the selection's (:func:`pn_tf.extract.extract_at`).
"""

import os

from pn_tf.pipeline import artifacts
from pn_tf.pipeline.errors import PipelineError
from pn_tf.pipeline.stages import export, report


def check(ctx):
    """Nothing beyond the budget's own checks (the runner asks the budget)."""


def run(ctx):
    from pn_tf.extract import ExtractionError, channel_scores, extract_at
    from pn_tf.graph import ChannelGraph, count_params
    from pn_tf.io import atomic_path
    from pn_tf.training import evaluate_splits

    c = ctx.config
    network = ctx.load_network(ctx.summary("search")["weights"])
    graph = ChannelGraph(network)
    scores = channel_scores(c.selection, network, graph, seed=c.seed)
    cost, images = ctx.budget.cost_model(graph), ctx.images("holdout", 64)

    def extract(reduction):
        with ctx.strategy.scope():
            return extract_at(network, reduction, cost=cost, scores=scores, round_to=c.round_to,
                              images=images, graph=graph, name=ctx.model.pruned_name)

    try:  # a measured landing converts and times as the export stage does
        extraction, landing = ctx.budget.land(extract, network, graph, cost, export.calibration_batches(ctx),
                                              lambda: export.baseline_network(ctx), report.timing_image(ctx))
    except ExtractionError as err:
        raise PipelineError(f"{err} (workdir {ctx.workdir})") from err
    narrow, selection = extraction.model, extraction.selection
    path = os.path.join(ctx.stage_dir("extract"), artifacts.PRUNED_MODEL)
    if ctx.is_chief:
        with atomic_path(path) as tmp:
            narrow.save(tmp)
    baseline_flops = extraction.baseline_flops
    summary = {
        "model": ctx.relative(path),
        "widths": selection.widths,
        "full_widths": [int(g.size) for g in graph.groups],
        "flops": extraction.flops,
        "baseline_flops": baseline_flops,
        "flops_reduction": 1.0 - extraction.flops / baseline_flops,
        "params": count_params(narrow),
        "round_to": c.round_to,
        "equivalence_max_abs_diff": extraction.max_abs_diff,
        "equivalence_logit_scale": max(1.0, extraction.output_scale),
        "equivalence_max_rel_diff": extraction.max_rel_diff,
        "selection": c.selection,
        "notes": selection.notes,
        **ctx.budget.selection_fields(selection),
        **landing,
    }
    accuracy = evaluate_splits(narrow, ctx.data, c.eval_take)
    for split in ("holdout", "test"):
        if f"{split}_accuracy" in accuracy:
            summary[f"{split}_accuracy_before_finetune"] = accuracy[f"{split}_accuracy"]
    return summary

