"""Building the physically narrower model and copying the kept weight slices.

METHOD.md item 10. The narrow model is a clone of the gated model's graph in which
every layer that creates a pruned group gets fewer filters/units, gates become
``Identity``, and every weight is the kept slice of the original: producers are
sliced on their output axis, consumers on their input axis, per-channel layers (BN,
depthwise convs, PReLU) on their channel axis. Everything is driven by the
:class:`~pn_tf.graph.ChannelGraph`, so zoo models and users' own functional models
share this one path. What to slice and how to rewrite a layer's config is each layer
type's rule (:mod:`pn_tf.graph.rules`); the narrow model is rebuilt node by node
(:func:`pn_tf.graph.replay`), so ``keras.ops`` constants on channels are sliced too.
"""

import keras
import numpy as np

from pn_tf.graph import ChannelGraph
from pn_tf.graph.replay import layer_config, replay
from pn_tf.graph.rules import Narrowing, rule_for
from pn_tf.layers import ChannelGate, gate_layers


class ExtractionError(ValueError):
    """The requested channels cannot be removed from this model."""


def _kept_indices(graph, keep):
    """atom index -> sorted kept channel indices within that atom."""
    by_root = {graph.root(g.atoms[0]): np.flatnonzero(k) for g, k in zip(graph.groups, keep)}
    return {a.index: by_root.get(graph.root(a.index), np.arange(a.size)) for a in graph.atoms}


def _channel_index(atoms, kept, graph):
    """Kept positions along a channel axis made of ``atoms`` laid side by side."""
    parts, offset = [], 0
    for a in atoms:
        parts.append(kept[a] + offset)
        offset += graph.atoms[a].size
    return np.concatenate(parts) if parts else np.zeros(0, dtype=int)


def clone_layer(layer):
    """A fresh copy of ``layer`` from its config, or ``layer`` itself if that is impossible.

    Layers that cannot be rebuilt from their config (a Lambda holding a Python
    lambda, unregistered custom layers) are shared with the new model; the engine
    treats them as opaque, so they are never narrowed. keras.ops operations are
    stateless and reused as they are.
    """
    if not isinstance(layer, keras.layers.Layer):
        return layer
    try:
        return layer.__class__.from_config(layer_config(layer))
    except Exception:  # noqa: BLE001 - any failure means "cannot rebuild"
        return layer


def ungated_config(layer):
    """``(class, config)`` of ``layer`` without a gate held inside it: a layer that holds one
    (:class:`~pn_tf.layers.HeadGatedAttention`) says what it is without it; others are themselves."""
    if hasattr(layer, "ungated_config"):
        return layer.ungated_config()
    return layer.__class__, layer.get_config()


def ungated_clone(layer):
    """:func:`clone_layer`, but a layer holding a gate inside becomes its plain Keras self."""
    if not hasattr(layer, "ungated_config"):
        return clone_layer(layer)
    cls, config = layer.ungated_config()
    return cls.from_config(config)


def copy_weights(old, new, change=None):
    """Fills ``new`` with ``old``'s weights, sliced by ``change`` (a Narrowing; None: all of them).

    The layer type's rule does it where it knows how (:meth:`ChannelRule.transfer_weights`: a
    layer whose copy is of another class); otherwise ``old.get_weights()`` is sliced by the
    rule's ``weight_axes``.
    """
    if rule_for(old).transfer_weights(old, new, change):
        return
    values = [np.asarray(w) for w in old.get_weights()]
    if change is None:
        new.set_weights(values)
        return
    axes = rule_for(old).weight_axes(old)
    if axes is None or len(axes) != len(values):
        raise ExtractionError(
            f"layer '{old.name}' ({type(old).__name__}) holds weights on pruned channels and "
            "pn-tf does not know how to slice them; give its rule weight_axes (docs/autoprune.md)"
        )
    sliced = []
    for value, spec in zip(values, axes):
        for axis, role in spec.items():
            index, size = (change.in_index, change.in_size) if role == "in" else (change.out_index, change.out_size)
            if len(index) != size:
                value = np.take(value, index, axis=axis)
        sliced.append(value)
    new.set_weights(sliced)


def copy_model(model, substitute=clone_layer, rewrite=None, copy_weights=copy_weights, name=None):
    """A flat copy of ``model`` whose layers are ``substitute(layer)``, weights copied over.

    ``copy_weights(old, new)`` fills each substituted layer that has weights (default:
    the same values, :func:`copy_weights`); ``rewrite`` is :func:`~pn_tf.graph.replay`'s
    argument hook.
    """
    pairs = []

    def fresh(op):
        new = substitute(op)
        if new is not None and new is not op:
            pairs.append((op, new))
        return new

    copy = replay(model, fresh, rewrite, name=name)
    for old, new in pairs:
        if getattr(new, "weights", None):
            copy_weights(old, new)
    return copy


def plan_narrowing(graph, keep):
    """``{id(operation): Narrowing}`` for every call whose channels change."""
    kept = _kept_indices(graph, keep)
    plan = {}
    for op, in_atoms, out_atoms in graph.recorded().values():
        change = Narrowing(_channel_index(in_atoms, kept, graph), _channel_index(out_atoms, kept, graph),
                           sum(graph.atoms[a].size for a in in_atoms),
                           sum(graph.atoms[a].size for a in out_atoms))
        if change.changed and not isinstance(op, ChannelGate):
            plan[id(op)] = change
    return plan


def extract_model(model, keep, graph=None, name=None):
    """The narrow functional model that keeps ``keep[g]`` channels of group g.

    Args:
        model: the gated keras.Model (functional, Sequential or nested: the result is
            flat, see :func:`pn_tf.graph.flatten`).
        keep: list of bool arrays, one per group of ``graph`` (True = kept).
        graph: its :class:`ChannelGraph` (built if None).
        name: name of the new model (default: ``<model.name>_pruned``).

    Returns:
        A keras.Model whose gates are Identity layers and whose outputs equal
        ``model``'s with those channels' gates set to 0 and the others to 1.
    """
    graph = graph or ChannelGraph(model)
    if len(keep) != len(graph.groups):
        raise ExtractionError(f"keep has {len(keep)} entries, the model {len(graph.groups)} groups")
    keep = [np.asarray(k, dtype=bool) for k in keep]
    for group, k in zip(graph.groups, keep):
        if k.shape != (group.size,):
            raise ExtractionError(f"group '{group.gate}': keep has shape {k.shape}, expected ({group.size},)")
        if not k.any():
            raise ExtractionError(f"group '{group.gate}' would lose all {group.size} channels; keep at least one")
    plan = plan_narrowing(graph, keep)

    def substitute(op):
        if isinstance(op, ChannelGate):
            return keras.layers.Identity(name=op.name)
        if id(op) in plan:  # a layer, or a keras.ops operation whose config holds a width
            cls, config = ungated_config(op)
            return cls.from_config(rule_for(op).narrow_config(op, config, plan[id(op)]))
        return ungated_clone(op)

    def rewrite(node, op, args, kwargs):
        change = plan.get(id(node.operation))
        if change is None:
            return args, kwargs
        return rule_for(node.operation).narrow_arguments(node, args, kwargs, change)

    def narrowed_weights(old, new):
        copy_weights(old, new, plan.get(id(old)))

    return copy_model(graph.model, substitute, rewrite, narrowed_weights, name=name or f"{model.name}_pruned")


def set_gate_masks(model, keep, graph=None):
    """Writes ``keep`` into the gates' ``mask`` variables (for mode ``"mask"``); a gate held inside
    a layer (attention heads) is found too."""
    graph = graph or ChannelGraph(model)
    gates = {gate.name: gate for gate in gate_layers(model)}
    for group, k in zip(graph.groups, keep):
        gates[group.gate].mask.assign(np.asarray(k, dtype="float32"))
