"""Extraction of a gated copy at a FLOPs target, and removal of the gate leftovers."""

import keras

from pn_tf.auto._util import _layer_of, _quiet
from pn_tf.graph import ChannelGraph, FlopsModel
from pn_tf.graph.replay import replay
from pn_tf.layers import gate_layers


def extract_at(gated, target_flops_reduction, scores=None, round_to=1):
    """Deterministic extraction of a gated model at a FLOPs target.

    Returns:
        ``(narrow model, selection, graph)``.
    """
    from pn_tf.extract import extract_model, gate_scores, select_channels

    with _quiet():
        graph = ChannelGraph(gated)
    flops = FlopsModel(graph)
    selection = select_channels(flops, scores if scores is not None else gate_scores(gated),
                                target_reduction=target_flops_reduction, round_to=round_to)
    narrow = extract_model(gated, selection.keep, graph,
                           name=gated.name.removesuffix("_gated") + "_pruned")
    return simplify(narrow, {g.name for g in gate_layers(gated)}), selection, graph


def _is_mask_multiply(op):
    """Whether ``op`` is a ``pn_mask_*`` multiply by a concatenation of gated ones."""
    if not isinstance(op, keras.layers.Multiply) or not op.name.startswith("pn_mask_"):
        return False
    mask = _layer_of(op._inbound_nodes[0].input_tensors[1])
    return isinstance(mask, keras.layers.Concatenate) and mask.name.startswith("pn_mask_cat_")


def simplify(model, gate_names):
    """``model`` without the Identity layers left by gates and without mask branches.

    After extraction a gate is an Identity and a mask branch multiplies by ones;
    both are dropped (the same layer objects are reused, so weights are kept).
    """
    def leftover(op):
        return (isinstance(op, keras.layers.Identity) and op.name in gate_names) or _is_mask_multiply(op)

    if not any(leftover(layer) for layer in model.layers):
        return model
    return replay(model, lambda op: None if leftover(op) else op)
