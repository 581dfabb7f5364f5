"""Gate insertion: :func:`insert_gates` rebuilds the functional graph with ChannelGates.

Where a read sees several spaces laid side by side (DenseNet: a BN-ReLU over a
concatenation), one gate cannot sit on the tensor; the copy then multiplies it by
``concat(gate_i(ones_i))``, where ``ones_i`` is a 1x1 tensor of ones of space i
built from that space's producer output with standard layers
(``GlobalAveragePooling`` + ``Rescaling(0, offset=1)``).

The copy is flat: a Sequential model or a backbone nested in a classifier becomes one
functional graph of the same layers under the same names (:func:`pn_tf.graph.flatten`).
"""

import keras

from pn_tf.auto._util import _quiet, log
from pn_tf.auto.analysis import _strip_gates, analyse
from pn_tf.graph import ChannelGraph
from pn_tf.graph.replay import replay
from pn_tf.graph.rules import CARRY, rule_for
from pn_tf.layers import ChannelGate, gate_layers


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


def _passes_zero(graph, node):
    """A single-tensor call that carries its input's channels and keeps zeros zero."""
    if node.is_input or len(node.input_tensors) != 1 or len(node.output_tensors) != 1:
        return False
    op = node.operation
    if rule_for(op).kind != CARRY or not graph.keeps_zero(node):
        return False
    x, y = node.input_tensors[0], node.output_tensors[0]
    return set(graph.segments(x)) == set(graph.segments(y))


def _insertion_point(graph, tensor, consumers):
    """Where to gate a read of ``tensor``: after the last op that can revive a zero.

    Walks back through zero-preserving per-channel layers (pooling, padding, Flatten,
    bias-free depthwise convolutions, ReLU-like activations), then forward again
    through element-wise activations while the tensor has a single consumer (so that
    the gate sits after BN-ReLU, as in the zoo).
    """
    t = tensor
    while _passes_zero(graph, _producer_node(t)):
        t = _producer_node(t).input_tensors[0]
    while True:
        nodes = consumers.get(id(t), [])
        if len(nodes) != 1:
            break
        node = nodes[0]
        rule = rule_for(node.operation)
        if not (rule.elementwise and rule.nonlinear(node.operation) and _passes_zero(graph, node)):
            break
        t = node.output_tensors[0]
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
        if tensor is None:  # a space inside a layer's call: gated by swapping the layer (_rebuild)
            continue
        if role not in ("conv", "dense") and not (gate_depthwise and role == "depthwise"):
            continue
        if not any(graph.root(a) in roots for a in atoms):
            continue
        t = _insertion_point(graph, tensor, consumers)
        points[id(t)] = t
    return points


def _inner_gated(graph, groups, taken):
    """``{id(layer): (layer, its gated copy)}`` for the layers holding a group inside their call
    (attention heads): the copy applies a gate of its own to that space (``with_inner_gate``)."""
    copies = {}
    for g in groups:
        owner = graph.inner_owner(g.atoms[0])
        if owner is not None:
            layer = graph.operation(owner)
            gate = _unique_name(f"{owner}_heads_gate", taken)
            copies[id(layer)] = (layer, rule_for(layer).with_inner_gate(layer, gate))
    return copies


def _rebuild(model, graph, groups, points, name):
    """Calls ``model``'s operations again, gating the tensors in ``points`` and swapping the layers
    that hold a group inside for their gated copies."""
    from pn_tf.extract.surgery import copy_weights

    taken = {layer.name for layer in model.layers}
    swapped = _inner_gated(graph, groups, taken)
    gates = {}
    for g in groups:
        if graph.inner_owner(g.atoms[0]) is not None:
            continue
        base = f"{g.producers[0]}_gate" if g.producers else f"space{g.index}_gate"
        gates[graph.root(g.atoms[0])] = ChannelGate(name=_unique_name(base, taken))
    raw, mask_parts = {}, {}  # raw: the ungated new tensor of each original one

    def ones_part(atom, rank):
        key = (atom, rank)
        if key in mask_parts:
            return mask_parts[key]
        birth = graph.birth.get(atom)
        if birth is None:  # any tensor holding an atom tied to this one will do
            root = graph.root(atom)
            birth = next((t for a, t in graph.birth.items() if graph.root(a) == root), None)
        if birth is None or raw.get(id(birth)) is None:
            raise ValueError(f"no tensor holds channel space {atom} alone; cannot build its mask")
        source = raw[id(birth)]
        k = len(mask_parts)
        y = source
        if len(source.shape) > 2:
            y = _global_pool(source, keepdims=rank == len(source.shape),
                             name=_unique_name(f"pn_pool_{k}", taken))
        if rank > 2 and len(y.shape) != rank:
            y = keras.layers.Reshape((1,) * (rank - 2) + (source.shape[-1],),
                                     name=_unique_name(f"pn_reshape_{k}", taken))(y)
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

    def after(node, outputs):
        for x, y in zip(node.outputs, outputs):
            raw[id(x)] = y
        return [gated(x, y) if id(x) in points else y for x, y in zip(node.outputs, outputs)]

    rebuilt = replay(model, substitute=lambda op: swapped.get(id(op), (op, op))[1], after=after, name=name)
    for layer, copy in swapped.values():
        copy_weights(layer, copy)
    return rebuilt


def _global_pool(source, keepdims, name):
    """Global average pooling of a 1-D, 2-D or 3-D feature map (a standard Keras layer)."""
    pools = {1: keras.layers.GlobalAveragePooling1D, 2: keras.layers.GlobalAveragePooling2D,
             3: keras.layers.GlobalAveragePooling3D}
    return pools[len(source.shape) - 2](keepdims=keepdims, name=name)(source)


def insert_gates(model, groups=None, policy="all", exclude=(), gate_depthwise=True, **overrides):
    """A copy of ``model`` (same weights) with a ChannelGate on every group.

    Args:
        model: a built functional or Sequential keras.Model without gates (a zoo
            model's gates are stripped first); nested sub-models are flattened into
            the copy, keeping their layers' names.
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
    from pn_tf.extract.surgery import copy_model

    copy = copy_model(model)  # a private copy: the caller's model keeps its layers
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
