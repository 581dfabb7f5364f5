"""Prune any functional Keras model: find its channel groups, gate them, search, extract.

The one channel-dependency engine (:class:`pn_tf.graph.ChannelGraph`) does the
analysis; this module only decides *which* of the spaces it finds to prune and
*where* to put the gates, then hands the gated copy to the same FLOPs model, PN
search and extraction that the zoo uses.

* :func:`find_groups` lists the prunable channel spaces of an un-gated model.
* :func:`insert_gates` builds a copy of the model (same weights) with one
  :class:`~pn_tf.layers.ChannelGate` per space, called wherever a convolution or
  dense layer reads that space after the last operation that could turn a zero
  back into a non-zero value (BN, bias, sigmoid). With gates in ``"identity"``
  mode the copy computes exactly the original model.
* :func:`prune` runs the PN search on the gated copy and extracts the narrow model.

Where a read sees several spaces laid side by side (DenseNet: a BN-ReLU over a
concatenation), one gate cannot sit on the tensor; the copy then multiplies it by
``concat(gate_i(ones_i))``, where ``ones_i`` is a 1x1 tensor of ones of space i
built from that space's producer output with standard layers
(``GlobalAveragePooling2D`` + ``Rescaling(0, offset=1)``). The engine reads this
as ordinary gates, concatenation and a multiply, so nothing downstream changes.
"""

import contextlib
import dataclasses
import logging
import os

import keras
import numpy as np

from pn_tf.graph import ChannelGraph, FlopsModel, count_params
from pn_tf.graph.channels import MERGES, ZERO_PRESERVING_ACTIVATIONS, _activation_name, keeps_zero
from pn_tf.layers import ChannelGate, gate_layers, set_gate_mode

log = logging.getLogger(__name__)

# Policy presets. "all": every space the engine can prune. "internal": only
# block-internal widths (what the zoo declares): not residual streams, not spaces
# read by several convolutions, not heads/SE read at 1x1, not linear bottlenecks.
POLICIES = {
    "all": dict(prune_residual=True, prune_branching=True, prune_heads=True, prune_linear=True),
    "internal": dict(prune_residual=False, prune_branching=False, prune_heads=False,
                     prune_linear=False),
}
ADDITIVE_MERGES = tuple(m for m in MERGES if m is not keras.layers.Multiply)
ACTIVATIONS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
               keras.layers.PReLU, keras.layers.ELU)
# Single-input layers a zero passes through unchanged (walking back from a read).
_PASS_ZERO = (keras.layers.Identity, keras.layers.Flatten, keras.layers.Reshape)


@dataclasses.dataclass
class Analysis:
    """What :func:`analyse` found.

    Attributes:
        graph: the :class:`ChannelGraph` of the model.
        groups: the spaces chosen by the policy (``ChannelGroup`` with ``gate=None``).
        excluded: ``{first producer: reason}`` for prunable spaces the policy skipped.
        warnings: the engine's messages (e.g. opaque layers, named).
    """

    graph: ChannelGraph
    groups: list
    excluded: dict
    warnings: list


def _resolve_policy(policy, overrides):
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")
    resolved = dict(POLICIES[policy])
    for key, value in overrides.items():
        if key not in resolved:
            raise TypeError(f"unknown policy option {key!r}; known: {sorted(resolved)}")
        if value is not None:
            resolved[key] = bool(value)
    return resolved


def _strip_gates(model):
    """A copy of ``model`` with every gate replaced by Identity (same weights)."""

    from pn_tf.extract.surgery import clone_layer

    def clone(layer):
        if isinstance(layer, ChannelGate):
            return keras.layers.Identity(name=layer.name)
        return clone_layer(layer)

    stripped = keras.models.clone_model(model, clone_function=clone)
    for layer in stripped.layers:
        if layer.weights and layer is not model.get_layer(layer.name):
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return stripped


strip_gates = _strip_gates


def _layer_of(tensor):
    return tensor._keras_history[0]


def _spatial_is_one(tensor):
    return len(tensor.shape) <= 2 or all(d == 1 for d in tensor.shape[1:-1])


def _is_activation(layer):
    name = _activation_name(layer)
    if name is None:
        activation = getattr(layer, "activation", None)  # conv/dense with a built-in one
        name = getattr(activation, "__name__", None)
        if name is None:
            return False
    return name not in ("linear", None)


def _space_traits(graph, space):
    """(residual, consumers that mix channels, read at 1x1/dense, passes a nonlinearity)."""
    root = graph.root(space.atoms[0])
    layers = {layer.name: layer for layer in graph.model.layers}
    residual = any(isinstance(layers.get(name), ADDITIVE_MERGES) for name in space.carriers)
    consumers, pooled = set(), False
    for name, role, atoms, tensor in graph.reads():
        if role in ("conv", "dense") and any(graph.root(a) == root for a in atoms):
            consumers.add(name)
            pooled = pooled or role == "dense" or _spatial_is_one(tensor)
    nonlinear = any(_is_activation(layers[name]) for name in space.carriers + space.producers
                    if name in layers)
    return residual, consumers, pooled, nonlinear


def analyse(model, policy="all", exclude=(), **overrides):
    """The channel spaces of ``model`` and which of them ``policy`` prunes.

    Args:
        model: a built functional keras.Model (gates, if any, are ignored: a
            model from the zoo is analysed as if its gates were Identity).
        policy: ``"all"`` (default) or ``"internal"`` (see ``POLICIES``).
        exclude: names of layers whose output channels must not be pruned.
        **overrides: ``prune_residual``, ``prune_branching``, ``prune_heads``,
            ``prune_linear`` (bool) to change single rules of the preset.

    Returns:
        An :class:`Analysis`.
    """
    rules = _resolve_policy(policy, overrides)
    if gate_layers(model):
        model = _strip_gates(model)
    with _quiet():
        graph = ChannelGraph(model, strict=False)
    exclude = set(exclude)
    groups, excluded = [], {}
    for space in graph.prunable_spaces():
        residual, consumers, pooled, nonlinear = _space_traits(graph, space)
        label = space.producers[0] if space.producers else f"atom {space.atoms[0]}"
        reason = ""
        if not consumers:
            reason = "no convolution or dense layer reads it"
        elif exclude.intersection(space.producers):
            reason = "excluded by the caller"
        elif residual and not rules["prune_residual"]:
            reason = "residual stream (tied by an additive merge)"
        elif len(consumers) > 1 and not rules["prune_branching"]:
            reason = f"read by {len(consumers)} layers"
        elif pooled and not rules["prune_heads"]:
            reason = "read at 1x1 (head or squeeze-excite)"
        elif not nonlinear and not rules["prune_linear"]:
            reason = "linear bottleneck (no activation between producer and consumers)"
        elif not all(a in graph.birth for a in space.atoms[:1]):
            reason = "no tensor holds it alone"
        if reason:
            excluded[label] = reason
            continue
        groups.append(dataclasses.replace(space, index=len(groups)))
    return Analysis(graph, groups, excluded, list(graph.warnings))


def find_groups(model, policy="all", exclude=(), **overrides):
    """The prunable channel groups of an un-gated functional model.

    Each group is a :class:`~pn_tf.graph.ChannelGroup` (``gate`` None) listing its
    width, its ``producers`` (layers sliced on their output channels), ``carriers``
    (per-channel layers such as BN and depthwise convolutions, sliced on their
    channel axis) and ``consumers`` (sliced on their input channels). Layers the
    engine cannot reason about (Lambda, custom layers) leave the channels they
    touch out, with a warning naming the layer. See :func:`analyse` for the options.
    """
    analysis = analyse(model, policy=policy, exclude=exclude, **overrides)
    for message in analysis.warnings:
        log.warning(message)
    return analysis.groups


@contextlib.contextmanager
def _quiet():
    """Silences the engine's per-analysis warnings (they were reported once already)."""
    logger = logging.getLogger("pn_tf.graph.channels")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- gate insertion -----------------------------------------------------------------


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


# -- extraction helpers and the one-call API ----------------------------------------


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


def _softmax_output(model):
    layer = _layer_of(keras.tree.flatten(model.outputs)[0])
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def image_folder_dataset(directory, image_size, batch_size, seed=0, take=None):
    """Labelled images from ``directory/<class>/*`` as float pixels 0..255."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image folder {directory!r} does not exist")
    ds = keras.utils.image_dataset_from_directory(
        directory, labels="inferred", label_mode="int", image_size=tuple(image_size),
        batch_size=batch_size, shuffle=True, seed=seed)
    if take is not None:
        ds = ds.unbatch().take(take).batch(batch_size)
    return ds


def prune(model, dataset, target_flops_reduction=0.5, search_epochs=5, batch_size=64,
          predictor="gru", data_dir=None, image_size=None, round_to=1, policy="all",
          exclude=(), take=None, seed=0, gate_lr=5e-2, pn_noise=15.0, verbose=0,
          return_summary=False, **overrides):
    """Prunes a functional Keras model physically with the PN search.

    Args:
        model: a built functional keras.Model that takes float pixels 0..255 and
            outputs class logits (a softmax output is accepted but degrades the
            search, which assumes logits).
        dataset: a TFDS name (``"cifar10"``: the search runs on its ``holdout``
            split), a folder of class sub-folders of images, or a ``tf.data``
            dataset of ``(images, integer labels)`` batches.
        target_flops_reduction: float in (0, 1). Fraction of MACs to remove.
        search_epochs, batch_size, predictor, gate_lr, pn_noise: the search.
        data_dir: TFDS data directory (default ``$TFDS_DATA_DIR``).
        image_size: side of the images fed to the search (default: the model's).
        round_to: round each group's kept width to a multiple of this.
        policy, exclude, **overrides: which spaces to prune (see :func:`analyse`).
        take: use only the first ``take`` examples (smoke runs).
        return_summary: also return a dict describing the result.

    Returns:
        The narrow keras.Model, or ``(model, summary)``.
    """
    import tensorflow as tf

    from pn_tf import data as data_lib
    from pn_tf.search import PNSearch

    if not 0.0 < target_flops_reduction < 1.0:
        raise ValueError(f"target_flops_reduction must be in (0, 1), got {target_flops_reduction}")
    if _softmax_output(model):
        log.warning("%s ends in a softmax; the PN search expects logits", model.name)
    gated = insert_gates(model, policy=policy, exclude=exclude, **overrides)
    if not gate_layers(gated):
        raise ValueError(f"{model.name} has no prunable channel groups")
    size = image_size or gated.inputs[0].shape[1]
    if isinstance(dataset, tf.data.Dataset):
        train = dataset
    elif isinstance(dataset, (str, os.PathLike)) and os.path.isdir(dataset):
        train = image_folder_dataset(dataset, (size, size), batch_size, seed=seed, take=take)
    else:
        train = data_lib.make_dataset(str(dataset), "holdout", batch_size, training=True,
                                      image_size=size, data_dir=data_dir, seed=seed, take=take)
    trainable = {layer.name: layer.trainable for layer in gated.layers}
    search = PNSearch(gated, predictor=predictor, target_reduction=target_flops_reduction,
                      pn_noise=pn_noise, seed=seed)
    search.compile(gate_optimizer=keras.optimizers.AdamW(gate_lr, weight_decay=1e-2))
    history = search.fit(train, epochs=search_epochs, verbose=verbose)
    set_gate_mode(gated, "identity")
    for layer in gated.layers:  # the search froze the network; the pruned model is trainable
        layer.trainable = trainable[layer.name]
    narrow, selection, graph = extract_at(gated, target_flops_reduction, round_to=round_to)
    summary = {
        "groups": len(graph.groups),
        "widths": [int(g.size) for g in graph.groups],
        "kept_widths": selection.widths,
        "flops": selection.total_flops,
        "pruned_flops": selection.flops,
        "flops_reduction": selection.reduction,
        "params": count_params(model),
        "pruned_params": count_params(narrow),
        "search_history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "warnings": list(getattr(gated, "pn_auto_warnings", [])) + list(selection.notes),
    }
    return (narrow, summary) if return_summary else narrow


def random_gate_logits(gated, seed=0):
    """Sets every gate's logits to N(0, 1) samples (for tests and the CLI)."""
    rng = np.random.RandomState(seed)
    for gate in gate_layers(gated):
        gate.logits.assign(rng.randn(gate.channels).astype("float32"))
