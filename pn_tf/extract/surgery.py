"""Building the physically narrower model and copying the kept weight slices.

METHOD.md item 10. The narrow model is a clone of the gated model's graph in which
every layer that creates a pruned group gets fewer filters/units, gates become
``Identity``, and every weight is the kept slice of the original: producers are
sliced on their output axis, consumers on their input axis, per-channel layers (BN,
depthwise convs, PReLU) on their channel axis. Everything is driven by the
:class:`~pn_tf.graph.ChannelGraph`, so zoo models and users' own functional models
share this one path.
"""

import keras
import numpy as np

from pn_tf.graph import ChannelGraph
from pn_tf.layers import ChannelGate


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


def _weight_axes(layer):
    """For each weight of ``layer``: {axis: "in" | "out"} of the channel axes it carries."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        return [{2: "in"}, {2: "in", 3: "out"}] + ([{0: "out"}] if layer.use_bias else [])
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [{2: "in"}] + ([{0: "in"}] if layer.use_bias else [])
    if isinstance(layer, keras.layers.Conv2D):
        kernel = {3: "out"} if layer.groups != 1 else {2: "in", 3: "out"}
        return [kernel] + ([{0: "out"}] if layer.use_bias else [])
    if isinstance(layer, keras.layers.Dense):
        return [{0: "in", 1: "out"}] + ([{0: "out"}] if layer.use_bias else [])
    if isinstance(layer, keras.layers.BatchNormalization):
        return [{0: "in"} for _ in layer.weights]
    if isinstance(layer, (keras.layers.PReLU, keras.layers.Normalization)):
        return [{w.ndim - 1: "in"} if w.ndim and w.shape[-1] > 1 else {} for w in layer.weights]
    return None


def _narrow_config(layer, in_index, out_index, in_size, out_size):
    config = layer.get_config()
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D)) and not isinstance(
        layer, keras.layers.DepthwiseConv2D
    ):
        config["filters"] = len(out_index)
    elif isinstance(layer, keras.layers.Dense):
        config["units"] = len(out_index)
    elif isinstance(layer, keras.layers.Reshape) and config["target_shape"][-1] == out_size:
        config["target_shape"] = tuple(config["target_shape"][:-1]) + (len(out_index),)
    elif isinstance(layer, keras.layers.Normalization) and len(in_index) != in_size:
        for key in ("mean", "variance"):
            if config.get(key) is not None:
                values = np.broadcast_to(np.asarray(config[key], dtype="float32"), (in_size,))
                config[key] = values[in_index].tolist()
    return config


def clone_layer(layer):
    """A fresh copy of ``layer`` from its config, or ``layer`` itself if that is impossible.

    Layers that cannot be rebuilt from their config (a Lambda holding a Python
    lambda, unregistered custom layers) are shared with the new model; the engine
    treats them as opaque, so they are never narrowed.
    """
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception:  # noqa: BLE001 - any failure means "cannot rebuild"
        return layer


def extract_model(model, keep, graph=None, name=None):
    """The narrow functional model that keeps ``keep[g]`` channels of group g.

    Args:
        model: the gated functional keras.Model.
        keep: list of bool arrays, one per group of ``graph`` (True = kept).
        graph: its :class:`ChannelGraph` (built if None).
        name: name of the new model (default: ``<model.name>_pruned``).

    Returns:
        A keras.Model without gates whose outputs equal ``model``'s with those
        channels' gates set to 0 and the others to 1.
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
    kept = _kept_indices(graph, keep)
    plan = {}
    for layer in model.layers:
        if layer.name not in graph._layer_atoms or isinstance(layer, ChannelGate):
            continue
        in_atoms, out_atoms = graph.layer_atoms(layer.name)
        plan[layer.name] = (
            _channel_index(in_atoms, kept, graph),
            _channel_index(out_atoms, kept, graph),
            sum(graph.atoms[a].size for a in in_atoms),
            sum(graph.atoms[a].size for a in out_atoms),
        )

    def clone(layer):
        if isinstance(layer, ChannelGate):
            return keras.layers.Identity(name=layer.name)
        if layer.name in plan:
            return layer.__class__.from_config(_narrow_config(layer, *plan[layer.name]))
        return clone_layer(layer)

    narrow = keras.models.clone_model(model, clone_function=clone)
    narrow.name = name or f"{model.name}_pruned"
    for layer in narrow.layers:
        if layer.weights and layer is not model.get_layer(layer.name):
            _copy_weights(model.get_layer(layer.name), layer, plan.get(layer.name))
    return narrow


def _copy_weights(old, new, plan):
    values = [np.asarray(w) for w in old.get_weights()]
    if plan is None or (len(plan[0]) == plan[2] and len(plan[1]) == plan[3]):
        new.set_weights(values)
        return
    in_index, out_index = plan[0], plan[1]
    axes = _weight_axes(old)
    if axes is None or len(axes) != len(values):
        raise ExtractionError(
            f"layer '{old.name}' ({type(old).__name__}) holds weights on pruned channels and "
            "pn-tf does not know how to slice them"
        )
    sliced = []
    for value, spec in zip(values, axes):
        for axis, role in spec.items():
            value = np.take(value, in_index if role == "in" else out_index, axis=axis)
        sliced.append(value)
    new.set_weights(sliced)


def set_gate_masks(model, keep, graph=None):
    """Writes ``keep`` into the gates' ``mask`` variables (for mode ``"mask"``)."""
    graph = graph or ChannelGraph(model)
    for group, k in zip(graph.groups, keep):
        model.get_layer(group.gate).mask.assign(np.asarray(k, dtype="float32"))
