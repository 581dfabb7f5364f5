"""Extract: choose the kept channels at the FLOPs (or latency) target and build the narrower model.

The gated network with hard gates at the selected channels must compute what the
extracted model computes (checked on held-out images, relative to the logit scale),
and the extracted model's FLOPs must be the selection's.
"""

import os

import numpy as np

from pn_tf.pipeline import artifacts
from pn_tf.pipeline.errors import PipelineError


def run(ctx):
    from pn_tf.auto import simplify
    from pn_tf.extract import channel_scores, extract_model, select_channels, set_gate_masks
    from pn_tf.graph import ChannelGraph, FlopsModel, count_params
    from pn_tf.io import atomic_path
    from pn_tf.layers import gate_layers, set_gate_mode
    from pn_tf.training import evaluate_splits

    c = ctx.config
    network = ctx.load_network(ctx.summary("search")["weights"])
    graph = ChannelGraph(network)
    flops = FlopsModel(graph)
    cost = ctx.cost_model(graph)
    scores = channel_scores(c.selection, network, graph, seed=c.seed)
    selection = select_channels(cost, scores, ctx.target_reduction, c.round_to)
    selected_flops = flops.count(selection.widths)
    with ctx.strategy.scope():
        narrow = extract_model(network, selection.keep, graph, name=ctx.model.pruned_name)
        narrow = simplify(narrow, {gate.name for gate in gate_layers(network)})
    set_gate_masks(network, selection.keep, graph)
    set_gate_mode(network, "mask")
    images = ctx.images("holdout", 64)
    gated = np.asarray(network(images))
    diff = float(np.max(np.abs(gated - np.asarray(narrow(images)))))
    # float32 resolves a logit of size s to about s * 6e-8, so the check is relative to the
    # logit scale (at least 1): a barely trained network's logits of thousands are not an error.
    scale = max(1.0, float(np.max(np.abs(gated))))
    measured = FlopsModel(narrow).total
    if abs(measured - selected_flops) > 1e-6 * selected_flops or diff > 1e-3 * scale:
        raise PipelineError(f"extraction check failed: FLOPs {measured} vs {selected_flops}, "
                            f"max abs diff {diff} at logit scale {scale}; please report this "
                            "with the workdir")
    path = os.path.join(ctx.stage_dir("extract"), artifacts.PRUNED_MODEL)
    if ctx.is_chief:
        with atomic_path(path) as tmp:
            narrow.save(tmp)
    summary = {
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
        "notes": selection.notes,
    }
    if c.target_latency_reduction is not None:
        summary.update({"target_latency_reduction": c.target_latency_reduction,
                        "latency_dtype": c.latency_dtype,
                        "estimated_latency_ms": selection.cost,
                        "estimated_baseline_latency_ms": selection.total_cost,
                        "estimated_latency_reduction": selection.reduction})
    accuracy = evaluate_splits(narrow, ctx.data, c.eval_take)
    for split in ("holdout", "test"):
        if f"{split}_accuracy" in accuracy:
            summary[f"{split}_accuracy_before_finetune"] = accuracy[f"{split}_accuracy"]
    return summary
