"""Extraction of a gated copy at a FLOPs target, and removal of the gate leftovers."""

import keras

from pn_tf.auto._util import _layer_of, _quiet
from pn_tf.graph import ChannelGraph, FlopsModel
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


def _is_mask_multiply(node):
    """Whether ``node`` is a ``pn_mask_*`` multiply by a concatenation of gated ones."""
    if not isinstance(node.operation, keras.layers.Multiply) or not node.operation.name.startswith("pn_mask_"):
        return False
    mask = _layer_of(node.input_tensors[1])
    return isinstance(mask, keras.layers.Concatenate) and mask.name.startswith("pn_mask_cat_")


def simplify(model, gate_names):
    """``model`` without the Identity layers left by gates and without mask branches.

    After extraction a gate is an Identity and a mask branch multiplies by ones;
    both are dropped (the same layer objects are reused, so weights are kept).
    """
    tensors = {}
    for x in model.inputs:
        tensors[id(x)] = x
    changed = False
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            layer = node.operation
            skip = (isinstance(layer, keras.layers.Identity) and layer.name in gate_names) or _is_mask_multiply(node)
            if skip:
                changed = True
                tensors[id(node.outputs[0])] = tensors[id(node.input_tensors[0])]
                continue
            if any(id(t) not in tensors for t in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            for x, y in zip(node.outputs, keras.tree.flatten(layer(*args, **kwargs))):
                tensors[id(x)] = y
    if not changed:
        return model
    outputs = keras.tree.map_structure(lambda x: tensors[id(x)], model._outputs_struct)
    return keras.Model(model._inputs_struct, outputs, name=model.name)
