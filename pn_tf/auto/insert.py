"""Gate insertion: :func:`insert_gates` rebuilds the functional graph with ChannelGates.

Where a read sees several spaces laid side by side (DenseNet: a BN-ReLU over a
concatenation), one gate cannot sit on the tensor; the copy then multiplies it by
``concat(gate_i(ones_i))``, where ``ones_i`` is a 1x1 tensor of ones of space i
built from that space's producer output with standard layers
(``GlobalAveragePooling2D`` + ``Rescaling(0, offset=1)``).
"""

import keras

from pn_tf.auto._util import _layer_of, _quiet, log
from pn_tf.auto.analysis import _strip_gates, analyse
from pn_tf.graph import ChannelGraph
from pn_tf.graph.channels import ZERO_PRESERVING_ACTIVATIONS, _activation_name, keeps_zero
from pn_tf.layers import ChannelGate, gate_layers

# Single-input layers a zero passes through unchanged (walking back from a read).
_PASS_ZERO = (keras.layers.Identity, keras.layers.Flatten, keras.layers.Reshape)


def _consumers_by_tensor(model):
    consumers = {}
    for depth in model._nodes_by_depth:
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            for t in node.input_tensors:
                consumers.setdefault(id(t), []).append(node)
    return consumers


def _producer_node(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def _passes_zero(layer, node):
    if len(node.input_tensors) != 1 or len(node.output_tensors) != 1:
        return False
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return layer.depth_multiplier == 1 and keeps_zero(layer)
    from pn_tf.graph.channels import PER_CHANNEL

    if isinstance(layer, PER_CHANNEL) or isinstance(layer, _PASS_ZERO):
        x, y = node.input_tensors[0], node.output_tensors[0]
        return x.shape[-1] == y.shape[-1] and keeps_zero(layer)
    return False


def _insertion_point(tensor, consumers):
    """Where to gate a read of ``tensor``: after the last op that can revive a zero.

    Walks back through zero-preserving per-channel layers, then forward again
    through activations while the tensor has a single consumer (so that the gate
    sits after BN-ReLU, as in the zoo).
    """
    t = tensor
    while True:
        node = _producer_node(t)
        if node.is_input or not _passes_zero(node.operation, node):
            break
        t = node.input_tensors[0]
    while True:
        nodes = consumers.get(id(t), [])
        if len(nodes) != 1:
            break
        layer = nodes[0].operation
        name = _activation_name(layer)
        if name is None or name not in ZERO_PRESERVING_ACTIVATIONS or len(nodes[0].output_tensors) != 1:
            break
        t = nodes[0].output_tensors[0]
    return t


def _unique_name(base, taken):
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _plan(graph, groups, gate_depthwise=True):
    """Insertion tensors: ``{id(tensor): tensor}`` in the analysed model."""
    roots = {graph.root(g.atoms[0]) for g in groups}
    consumers = _consumers_by_tensor(graph.model)
    points = {}
    for name, role, atoms, tensor in graph.reads():
        if role not in ("conv", "dense") and not (gate_depthwise and role == "depthwise"):
            continue
        if not any(graph.root(a) in roots for a in atoms):
            continue
        t = _insertion_point(tensor, consumers)
        points[id(t)] = t
    return points


def _rebuild(model, graph, groups, points, name):
    """Calls ``model``'s layers again on new inputs, gating the tensors in ``points``."""
    taken = {layer.name for layer in model.layers}
    gates = {}
    for g in groups:
        base = f"{g.producers[0]}_gate" if g.producers else f"space{g.index}_gate"
        gates[graph.root(g.atoms[0])] = ChannelGate(name=_unique_name(base, taken))
    raw, tensors, mask_parts = {}, {}, {}
    for x in model.inputs:
        layer = _layer_of(x)
        new = keras.Input(batch_shape=tuple(x.shape), dtype=x.dtype, name=layer.name)
        raw[id(x)] = tensors[id(x)] = new

    def ones_part(atom, rank):
        key = (atom, rank)
        if key in mask_parts:
            return mask_parts[key]
        birth = graph.birth.get(atom)
        if birth is None:  # any tensor holding an atom tied to this one will do
            root = graph.root(atom)
            birth = next((t for a, t in graph.birth.items() if graph.root(a) == root), None)
        if birth is None:
            raise ValueError(f"no tensor holds channel space {atom} alone; cannot build its mask")
        source = raw[id(birth)]
        k = len(mask_parts)
        if len(source.shape) == 4:
            y = keras.layers.GlobalAveragePooling2D(keepdims=rank == 4,
                                                    name=_unique_name(f"pn_pool_{k}", taken))(source)
        elif len(source.shape) == 2:
            y = source
            if rank == 4:
                y = keras.layers.Reshape((1, 1, source.shape[-1]), name=_unique_name(f"pn_reshape_{k}", taken))(y)
        else:
            raise ValueError(f"cannot build a channel mask from a rank-{len(source.shape)} tensor")
        y = keras.layers.Rescaling(0.0, offset=1.0, name=_unique_name(f"pn_ones_{k}", taken))(y)
        gate = gates.get(graph.root(atom))
        if gate is not None:
            y = gate(y)
        mask_parts[key] = y
        return y

    def gated(original, value):
        atoms = graph.segments(original)
        if not any(graph.root(a) in gates for a in atoms):
            return value
        if len(atoms) == 1:
            return gates[graph.root(atoms[0])](value)
        parts = [ones_part(a, len(value.shape)) for a in atoms]
        k = len(taken)
        mask = keras.layers.Concatenate(name=_unique_name(f"pn_mask_cat_{k}", taken))(parts)
        return keras.layers.Multiply(name=_unique_name(f"pn_mask_{k}", taken))([value, mask])

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            outputs = keras.tree.flatten(node.operation(*args, **kwargs))
            for x, y in zip(node.outputs, outputs):
                raw[id(x)] = y
                tensors[id(x)] = gated(x, y) if id(x) in points else y
    outputs = keras.tree.map_structure(lambda x: tensors[id(x)], model._outputs_struct)
    inputs = keras.tree.map_structure(lambda x: tensors[id(x)], model._inputs_struct)
    return keras.Model(inputs, outputs, name=name)


def _private_copy(model):
    from pn_tf.extract.surgery import clone_layer

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    for layer in copy.layers:
        if layer.weights and layer is not model.get_layer(layer.name):
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def insert_gates(model, groups=None, policy="all", exclude=(), gate_depthwise=True, **overrides):
    """A copy of ``model`` (same weights) with a ChannelGate on every group.

    Args:
        model: a built functional keras.Model without gates (a zoo model's gates
            are stripped first).
        groups: list of groups from :func:`find_groups` on this model, or None to
            find them with ``policy``/``exclude``/``**overrides``.
        gate_depthwise: bool. Also gate a group where a depthwise convolution
            reads it (as the zoo does), not only before channel-mixing layers.

    Returns:
        The gated functional model; ``ChannelGraph(gated).groups`` are the groups
        (a group the engine cannot validate is dropped with a warning). Its gates
        start in ``"identity"`` mode: the copy computes exactly ``model``.
    """
    if gate_layers(model):
        model = _strip_gates(model)
    copy = _private_copy(model)
    analysis = analyse(copy, policy=policy, exclude=exclude, **overrides)
    graph = analysis.graph
    if groups is None:
        groups = analysis.groups
    else:  # groups of the caller's model: the copy has the same layer names
        wanted = {tuple(g.producers) for g in groups}
        groups = [g for g in graph.prunable_spaces() if tuple(g.producers) in wanted]
    for message in analysis.warnings:
        log.warning(message)
    for _ in range(4):
        points = _plan(graph, groups, gate_depthwise)
        gated = _rebuild(copy, graph, groups, points, name=f"{model.name}_gated")
        with _quiet():
            check = ChannelGraph(gated, strict=False)
        found = {g.gate for g in check.groups}
        names = [g.name for g in gate_layers(gated)]
        bad = [n for n in names if n not in found]
        if not bad:
            gated.pn_auto_warnings = list(analysis.warnings)
            return gated
        for message in check.warnings:
            if "opaque" not in message:
                log.warning("dropping a group: %s", message)
        keep = [n not in bad for n in names]
        groups = [g for g, k in zip(groups, keep) if k]
    raise RuntimeError("could not place gates consistently on this model")
