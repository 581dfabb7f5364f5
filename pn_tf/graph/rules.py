"""What each layer type means for channels: one rule per type, in one registry.

A :class:`ChannelRule` says everything pn-tf needs to know about a layer type (or a
``keras.ops`` operation recorded in a functional graph):

* ``flow``: how channel spaces go through it (analysis, :class:`~pn_tf.graph.ChannelGraph`),
  what it reads and what its MACs are (the FLOPs model T(a));
* ``keeps_zero``: whether an all-zero (pruned) channel is still zero after it, which decides
  where gates may sit (a gate must come after the last op that can revive a zero);
* ``weight_axes`` / ``narrow_config`` / ``narrow_arguments``: how extraction slices its
  weights, rewrites its config and slices constants for the kept channels;
* ``transfer_weights`` / ``with_inner_gate``: for a layer holding a space inside its call
  (attention heads), how its weights move to a copy of another class and what gates that space;
* ``filter_norms``: per-output-channel L1 norms for the magnitude criterion;
* ``tflite``: what the TFLite converter fuses it with (:class:`TFLite`, set with
  ``with_tflite``), which the latency units read.

The graph engine, gate insertion, extraction, channel selection and the latency units only
ask this registry. A user's own layer is supported by registering a rule for its class::

    from pn_tf.graph import rules

    rules.register_rule(MyScale, rules.Carry(weights=("gamma",), keeps_zero=True))

An unregistered layer is *opaque*: its channels are left unpruned, with a warning that
names it and points here. Lookup follows the class's MRO, so subclasses inherit a rule.
"""

import copy
import dataclasses
import importlib
import logging
import math
import threading

import keras
import numpy as np

from pn_tf.graph.errors import GraphAnalysisError

log = logging.getLogger(__name__)

# Rule kinds, as the engine and the policies see them.
MIX = "mix"  # creates new channels from all input channels (conv, dense)
CARRY = "carry"  # keeps the channel axis, channel by channel (BN, activations, pooling)
MERGE = "merge"  # element-wise op of several tensors of one space (Add, Multiply)
CONCAT = "concat"  # lays spaces side by side
COUPLE = "couple"  # every channel's output depends on all channels (LayerNormalization)
OPAQUE = "opaque"  # unknown to pn-tf


@dataclasses.dataclass
class Narrowing:
    """Kept channel positions on a layer's input and output channel axes."""

    in_index: np.ndarray
    out_index: np.ndarray
    in_size: int
    out_size: int

    @property
    def changed(self):
        return len(self.in_index) != self.in_size or len(self.out_index) != self.out_size


def spatial_size(shape):
    """Product of the non-batch, non-channel dimensions of ``shape``."""
    size = 1
    for d in shape[1:-1]:
        if d is None:
            raise GraphAnalysisError(
                "FLOPs need a static input size: build the model with fixed spatial dimensions"
            )
        size *= int(d)
    return size


def _zeros_like(tensor):
    shape = [1 if d is None else int(d) for d in tensor.shape]
    return np.zeros(shape, dtype=keras.backend.standardize_dtype(tensor.dtype))


def zero_in_zero_out(op, node):
    """Runs ``op`` on all-zero inputs (with the node's own constants): are the outputs zero?

    Exact for operations without weights (activations, pooling, ``x * 6``, ``x + 3``).
    """
    zeros = {id(t): _zeros_like(t) for t in node.input_tensors}
    try:
        args, kwargs = node.arguments.fill_in(zeros)
        if getattr(op, "_call_has_training_arg", False):
            kwargs = dict(kwargs, training=False)
        outputs = keras.tree.flatten(op(*args, **kwargs))
    except Exception:  # noqa: BLE001 - an op that fails on zeros is not known to keep them
        return False
    return all(np.all(np.asarray(keras.ops.convert_to_numpy(y)) == 0) for y in outputs)


def _activation_keeps_zero(fn):
    if fn is None:
        return True
    try:
        return bool(np.all(keras.ops.convert_to_numpy(fn(keras.ops.zeros((1, 2)))) == 0))
    except Exception:  # noqa: BLE001
        return False


def _activation_is_nonlinear(fn):
    return fn is not None and getattr(fn, "__name__", "") not in ("linear", "")


def _axes(axis, rank):
    """``axis`` (an int or a list of them, maybe negative) as non-negative axes of a rank-``rank`` tensor."""
    return [a % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])]


@dataclasses.dataclass(frozen=True)
class TFLite:
    """What the TFLite converter (and its XNNPACK delegate) makes of a layer type.

    The latency units (:func:`pn_tf.latency.units.split_units`) read it: a unit is what
    TFLite runs as one op. Declared with :meth:`ChannelRule.with_tflite` where the layer
    type's rule is registered; the default says none of these.

    Attributes:
        fuses_into_previous: folded into the op before it when that op is a
            ``fusion_target`` and this is its only reader (BatchNormalization, an activation).
        fusion_target: an op such layers fold into (a convolution, Dense, Add).
        absorbs_pad: XNNPACK folds a zero padding right before it into it (2-D convolutions).
        pad: a zero padding, folded into the ``absorbs_pad`` op it alone feeds.
    """

    fuses_into_previous: bool = False
    fusion_target: bool = False
    absorbs_pad: bool = False
    pad: bool = False


class ChannelRule:
    """How one layer type treats the channel (last) axis. Base class of every rule.

    Subclasses override the methods below; the defaults describe a layer with no
    weights on channels and no channel-dependent config.

    Attributes:
        kind: one of ``"mix"``, ``"carry"``, ``"merge"``, ``"concat"``, ``"couple"``,
            ``"opaque"``.
        elementwise: an element-wise function of each value (an activation): gates may
            move past it, so that they sit after BN-ReLU as in the zoo.
        tflite: a :class:`TFLite`, what the TFLite converter makes of the layer type (which
            op it fuses into); set with :meth:`with_tflite`.
    """

    kind = OPAQUE
    elementwise = False
    tflite = TFLite()

    def with_tflite(self, **fields):
        """A copy of this rule declaring :class:`TFLite` ``fields`` for its layer type.

        ``register_rule(MyConv, rules.Convolution().with_tflite(fusion_target=True))``
        """
        rule = copy.copy(self)
        rule.tflite = dataclasses.replace(self.tflite, **fields)
        return rule

    def flow(self, graph, op, node):
        """Sets the channel spaces of ``node``'s outputs on ``graph`` (a ChannelGraph).

        Rules use the graph's primitives: ``segments``, ``masked_by``, ``read``,
        ``new_atom``, ``fix``, ``set``, ``add_cost``, ``record``, ``tie``, ``opaque``.
        """
        graph.opaque(op, node)

    def keeps_zero(self, op, node):
        """Whether an all-zero input channel gives an all-zero output channel."""
        return False

    def nonlinear(self, op):
        """Whether it applies a non-linearity (the ``prune_linear`` policy rule)."""
        return False

    def shares_channels(self, op):
        """Whether every call must keep the same channels (channel weights or config)."""
        return bool(self.weight_axes(op))

    def weight_axes(self, layer):
        """One dict per ``layer.get_weights()`` entry: ``{axis: "in" | "out"}``; None: unknown."""
        return [] if not getattr(layer, "weights", None) else None

    def narrow_config(self, layer, config, change):
        """``layer``'s config for the narrowed copy (``change``: a :class:`Narrowing`)."""
        return config

    def narrow_arguments(self, node, args, kwargs, change):
        """The node's call arguments for the narrowed copy (constants on channels sliced)."""
        return args, kwargs

    def filter_norms(self, layer):
        """L1 norm of each output channel's filter, or None (not a producer with a kernel)."""
        return None

    def transfer_weights(self, old, new, change):
        """Fills ``new`` (the layer a copied model calls instead of ``old``) with ``old``'s weights,
        sliced by ``change`` (a :class:`Narrowing`, or None: all of them).

        Returns False (the default) to leave it to extraction, which slices ``old.get_weights()``
        by :meth:`weight_axes`; a rule whose layer's copy is of another class or holds its weights
        in another order (attention with gated heads) does it here and returns True.
        """
        return False

    def with_inner_gate(self, layer, gate_name):
        """An unbuilt copy of ``layer`` that applies a new ChannelGate ``gate_name`` to the space
        it holds inside its call (see :meth:`ChannelGraph.inner_space`); None: it holds none."""
        return None


class Opaque(ChannelRule):
    """What it reads and writes stays unpruned.

    Args:
        reason: str. Why (kept with the fixed spaces); empty for an unregistered layer,
            which also logs a warning naming it and saying how to add a rule.
        warn: bool. Also log the reason (a known layer pn-tf does not prune, e.g. an LSTM).
    """

    def __init__(self, reason="", warn=False):
        self.reason = reason
        self.warn = warn

    def flow(self, graph, op, node):
        graph.opaque(op, node, self.reason, warn=self.warn)


class Carry(ChannelRule):
    """Acts on each channel separately and keeps the channel count (BN, activations, pools).

    Args:
        weights: which weights hold one value per channel on their last axis:
            ``"auto"`` (every weight whose last axis has the channel count), a tuple of
            weight-name suffixes (e.g. ``("gamma",)``), or ``()`` for none.
        keeps_zero: bool, a callable ``(op, node) -> bool``, or None: decide by running the
            op on zeros if it has no weights, else False.
        nonlinear: bool or callable ``op -> bool``.
        config_channels: config keys that hold the channel count (e.g. ``"projection_dim"``).
    """

    kind = CARRY

    def __init__(self, weights="auto", keeps_zero=None, nonlinear=False, config_channels=()):
        self.weights = weights
        self._keeps_zero = keeps_zero
        self._nonlinear = nonlinear
        self.config_channels = tuple(config_channels)

    def flow(self, graph, op, node):
        if len(node.input_tensors) != 1 or len(node.output_tensors) != 1 or (
                node.input_tensors[0].shape[-1] != node.output_tensors[0].shape[-1]):
            graph.opaque(op, node, f"'{op.name}' changes the channel count or has several inputs")
            return
        x, y = node.input_tensors[0], node.output_tensors[0]
        atoms = graph.segments(x)
        graph.set(y, atoms, graph.masked_by(x) if graph.keeps_zero(node) else frozenset())
        graph.record(op, atoms, atoms, shares=self.shares_channels(op))

    def keeps_zero(self, op, node):
        if callable(self._keeps_zero):
            return bool(self._keeps_zero(op, node))
        if self._keeps_zero is not None:
            return bool(self._keeps_zero)
        if getattr(op, "weights", None):
            return False
        return zero_in_zero_out(op, node)

    def nonlinear(self, op):
        return bool(self._nonlinear(op)) if callable(self._nonlinear) else bool(self._nonlinear)

    def weight_axes(self, layer):
        weights = getattr(layer, "weights", [])
        if not weights:
            return []
        channels = _channel_count(layer)
        axes = []
        for w in weights:
            name = w.path if hasattr(w, "path") else w.name
            if self.weights == "auto":
                per_channel = len(w.shape) >= 1 and channels is not None and w.shape[-1] == channels
            else:
                per_channel = any(name.endswith(suffix) for suffix in self.weights)
            axes.append({len(w.shape) - 1: "in"} if per_channel and len(w.shape) else {})
        return axes

    def narrow_config(self, layer, config, change):
        for key in self.config_channels:
            config[key] = len(change.in_index)
        return config


def _channel_count(layer):
    """The channel count of ``layer``'s first call (None if it was never called)."""
    nodes = getattr(layer, "_inbound_nodes", None)
    if not nodes or not nodes[0].input_tensors:
        return None
    return nodes[0].input_tensors[0].shape[-1]


class Activation(Carry):
    """An activation layer: per channel; keeps zeros iff f(0) == 0 (run on zeros)."""

    elementwise = True

    def __init__(self):
        super().__init__(weights="auto", nonlinear=True)

    def flow(self, graph, op, node):
        name = getattr(getattr(op, "activation", None), "__name__", "")
        if name in ("softmax", "log_softmax"):
            Couple(f"{name} normalizes across channels").flow(graph, op, node)
            return
        super().flow(graph, op, node)

    def nonlinear(self, op):
        fn = getattr(op, "activation", None)
        return fn is None or _activation_is_nonlinear(fn)

    def keeps_zero(self, op, node):
        if getattr(op, "weights", None):  # PReLU: alpha * min(x, 0) is 0 at 0
            return True
        return zero_in_zero_out(op, node)


class BatchNorm(Carry):
    """Batch normalization over the last axis: per channel, revives zeros (beta, mean).

    ``flow`` returns whether it carried the space (False: another axis, left alone).
    """

    def __init__(self):
        super().__init__(weights="auto", keeps_zero=False)

    def flow(self, graph, op, node):
        rank = len(node.input_tensors[0].shape)
        if _axes(op.axis, rank) != [rank - 1]:
            graph.opaque(op, node, f"'{op.name}' normalizes over axis {op.axis}, not the channels")
            return False
        super().flow(graph, op, node)
        return True

    def weight_axes(self, layer):
        return [{0: "in"} for _ in layer.weights]


class Normalization(Carry):
    """Preprocessing normalization: per channel (mean, variance in weights and config)."""

    def __init__(self):
        super().__init__(weights="auto", keeps_zero=False)

    def weight_axes(self, layer):
        return [{len(w.shape) - 1: "in"} if len(w.shape) and w.shape[-1] > 1 else {} for w in layer.weights]

    def narrow_config(self, layer, config, change):
        for key in ("mean", "variance"):
            if config.get(key) is not None:
                values = np.broadcast_to(np.asarray(config[key], dtype="float32"), (change.in_size,))
                config[key] = values[change.in_index].tolist()
        return config


class Couple(ChannelRule):
    """Every output channel depends on all input channels of the space (LayerNormalization).

    Removing a channel would change the others (their mean and variance), so the spaces it
    reads are fixed with ``reason``; it is understood, not opaque.
    """

    kind = COUPLE

    def __init__(self, reason="normalizes across its channels"):
        self.reason = reason

    def flow(self, graph, op, node):
        for t in node.input_tensors:
            graph.fix(graph.read(op, "couple", t), f"{type(op).__name__} '{op.name}' {self.reason}")
        x, y = node.input_tensors[0], node.output_tensors[0]
        atoms = graph.segments(x)
        if x.shape[-1] != y.shape[-1] or len(node.output_tensors) != 1:
            atoms = (graph.new_atom(y.shape[-1] or 1, op.name, "output of a coupling layer"),)
        graph.set(y, atoms)
        graph.record(op, graph.segments(x), atoms)


class AxisNormalization(ChannelRule):
    """LayerNormalization / RMSNormalization: couples channels iff it normalizes over them."""

    def flow(self, graph, op, node):
        rank = len(node.input_tensors[0].shape)
        if rank - 1 in _axes(getattr(op, "axis", -1), rank):
            Couple("normalizes across its channels (removing one changes the others' mean and "
                   "variance)").flow(graph, op, node)
        else:  # statistics over other axes: channel by channel, weights not on channels
            Carry(weights=(), keeps_zero=False).flow(graph, op, node)

    def weight_axes(self, layer):
        return [{} for _ in layer.weights]


class GroupNorm(BatchNorm):
    """GroupNormalization: statistics per group of C/G channels; whole groups removable."""

    def flow(self, graph, op, node):
        if not super().flow(graph, op, node):
            return False
        x = node.input_tensors[0]
        channels = x.shape[-1]
        groups = channels if op.groups == -1 else op.groups
        atoms = graph.segments(x)
        if groups == 1:
            graph.fix(atoms, f"GroupNormalization '{op.name}' with one group normalizes across all its channels")
        elif len(atoms) != 1:
            graph.fix(atoms, f"GroupNormalization '{op.name}' reads several spaces side by side")
        else:
            graph.set_granule(atoms[0], channels // groups)
        return True

    def narrow_config(self, layer, config, change):
        if config["groups"] != -1:
            config["groups"] = len(change.in_index) // (change.in_size // config["groups"])
        return config


class Producer(ChannelRule):
    """Creates a new space from all of its input channels: the base of conv and dense rules.

    Attributes:
        units_key: the config key holding the output channel count.
    """

    kind = MIX
    units_key = "filters"

    def produce(self, graph, op, node, role, costs):
        """Reads the input as ``role``, makes the output a new space; ``costs``: (kind, coef, linear)."""
        x, y = node.input_tensors[0], node.output_tensors[0]
        in_atoms = graph.read(op, role, x)
        out_atom = graph.new_atom(y.shape[-1], op.name)
        for kind, coef, linear in costs:
            graph.add_cost(op, kind, coef, in_atoms, () if linear else (out_atom,), linear)
        graph.set(y, [out_atom])
        graph.record(op, in_atoms, (out_atom,))
        return in_atoms, out_atom

    def nonlinear(self, op):
        return _activation_is_nonlinear(getattr(op, "activation", None))

    def shares_channels(self, op):
        return True

    def narrow_config(self, layer, config, change):
        config[self.units_key] = len(change.out_index)
        return config


class Convolution(Producer):
    """ConvND (``transpose=False``) or ConvNDTranspose: a new space from all input channels.

    MACs: ``prod(kernel) * C_in/groups * C_out * positions``, where positions are the
    output's (a convolution) or the input's (a transposed one: each input position
    scatters a full kernel).
    """

    def __init__(self, transpose=False):
        self.transpose = transpose

    def _depthwise(self, op):
        """A grouped convolution with one input and one output channel per group (``groups ==
        C_in == filters``): a depthwise convolution written as a Conv (keras-hub's MobileNet)."""
        groups = getattr(op, "groups", 1)
        channels = _channel_count(op)
        return (not self.transpose and groups != 1 and channels is not None
                and groups == channels == op.filters)

    def flow(self, graph, op, node):
        x, y = node.input_tensors[0], node.output_tensors[0]
        groups = getattr(op, "groups", 1)
        if self._depthwise(op):
            graph.read(op, "depthwise", x)
            atoms = graph.segments(x)
            graph.add_cost(op, "depthwise", math.prod(op.kernel_size) * spatial_size(y.shape), atoms,
                           linear=True)
            graph.set(y, atoms, graph.masked_by(x) if graph.keeps_zero(node) else frozenset())
            graph.record(op, atoms, atoms)
            return
        positions = spatial_size(x.shape if self.transpose else y.shape)
        in_atoms, out_atom = self.produce(graph, op, node, "conv",
                                          [("conv", math.prod(op.kernel_size) * positions / groups, False)])
        if groups != 1:
            reason = f"grouped convolution '{op.name}'"
            graph.fix(in_atoms, reason)
            graph.fix([out_atom], reason)

    def keeps_zero(self, op, node):
        return (self._depthwise(op) and not op.use_bias
                and _activation_keeps_zero(getattr(op, "activation", None)))

    def nonlinear(self, op):
        return _activation_is_nonlinear(getattr(op, "activation", None))

    def narrow_config(self, layer, config, change):
        if self._depthwise(layer):
            config["filters"] = config["groups"] = len(change.in_index)
            return config
        return super().narrow_config(layer, config, change)

    def weight_axes(self, layer):
        if self._depthwise(layer):  # kernel (*k, 1, C), bias (C,)
            return [{-1: "in"}] + ([{0: "in"}] if layer.use_bias else [])
        if self.transpose:
            kernel = {-2: "out", -1: "in"}
        else:
            kernel = {-1: "out"} if getattr(layer, "groups", 1) != 1 else {-2: "in", -1: "out"}
        return [kernel] + ([{0: "out"}] if layer.use_bias else [])

    def filter_norms(self, layer):
        kernel = np.asarray(layer.kernel)
        kernel = np.moveaxis(kernel, -2, -1) if self.transpose else kernel
        return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


class Dense(Producer):
    """Dense on the last axis (also of a feature map: ConvNeXt's pointwise MLP)."""

    units_key = "units"

    def flow(self, graph, op, node):
        y = node.output_tensors[0]
        positions = spatial_size(y.shape) if len(y.shape) > 2 else 1
        self.produce(graph, op, node, "dense", [("dense", positions, False)])

    def weight_axes(self, layer):
        return [{0: "in", 1: "out"}] + ([{0: "out"}] if layer.use_bias else [])

    def filter_norms(self, layer):
        return np.abs(np.asarray(layer.kernel)).sum(axis=0)


def _einsum_parts(equation):
    """``(input, kernel, output)`` index strings of an EinsumDense equation (``"abc,cd->abd"``)."""
    inputs, output = equation.replace(" ", "").split("->")
    x, kernel = inputs.split(",")
    return x, kernel, output


def einsum_macs(layer, input_shape):
    """Multiply-accumulates of one example through EinsumDense ``layer``: the product of the sizes
    of every index of its equation (the batch counted as 1), or None if pn-tf cannot read it."""
    x, kernel, _ = _einsum_parts(layer.equation)
    dims = [1] + [None if d is None else int(d) for d in input_shape[1:]]
    if None in dims or "." in x.replace("...", "", 1) or "." in kernel or ("..." in x and not x.startswith("...")):
        return None
    letters = x[3:] if x.startswith("...") else x
    if len(letters) > len(dims):
        return None
    macs = math.prod(dims[:len(dims) - len(letters)])  # what "..." stands for
    sizes = dict(zip(letters, dims[len(dims) - len(letters):]))
    sizes.update(zip(kernel, (int(d) for d in layer.kernel.shape)))
    return macs * math.prod(sizes.values())


def _dense_like(layer):
    """Whether EinsumDense ``layer`` is a Dense on the last axis: ``"<p>c,cd-><p>d"``, bias on d."""
    x, kernel, output = _einsum_parts(layer.equation)
    if len(kernel) != 2:
        return False
    c, d = kernel
    return (c != d and x.endswith(c) and c not in x[:-1] and d not in x and output == x[:-1] + d
            and layer.bias_axes in (None, "", d))


class EinsumDense(Producer):
    """keras.layers.EinsumDense: a Dense on the last axis when its equation is one (``"abc,cd->abd"``,
    ``"...b,bc->...c"``): input and output channels prune as a Dense's. Any other equation (a
    projection into heads, a contraction over tokens) is not pruned, but its MACs are counted."""

    units_key = "output_shape"

    def flow(self, graph, op, node):
        x = node.input_tensors[0]
        if len(node.input_tensors) == 1 and _dense_like(op):
            positions = spatial_size(x.shape) if len(x.shape) > 2 else 1  # y's may read None
            self.produce(graph, op, node, "dense", [("dense", positions, False)])
            return
        macs = einsum_macs(op, x.shape)
        in_atoms = graph.segments(x)
        graph.opaque(op, node, f"computes '{op.equation}', not a Dense on the last axis: its MACs are "
                               "counted, its channels left unpruned")
        if macs is not None:  # else ChannelGraph.uncounted_layers names it in a warning
            graph.add_cost(op, "einsum", macs / x.shape[-1], in_atoms, linear=True)

    def weight_axes(self, layer):
        if not _dense_like(layer):
            return None
        return [{0: "in", 1: "out"}] + ([{0: "out"}] if layer.bias is not None else [])

    def narrow_config(self, layer, config, change):
        shape = config["output_shape"]
        kept = len(change.out_index)
        config["output_shape"] = kept if isinstance(shape, int) else list(shape[:-1]) + [kept]
        return config

    def filter_norms(self, layer):
        return np.abs(np.asarray(layer.kernel)).sum(axis=0) if _dense_like(layer) else None


# MultiHeadAttention.call's arguments, in order (the node records them as given).
_ATTENTION_ARGS = ("query", "value", "key", "query_mask", "value_mask", "key_mask", "attention_mask",
                   "return_attention_scores", "training", "use_causal_mask")
# Its projections (sub-layer names, which name their weights "<layer>/<projection>/kernel") and
# the input each reads; "gate" is the gated-attention branch (``use_gate=True``).
_PROJECTIONS = {"query": "query", "key": "key", "value": "value", "gate": "query"}
_OUTPUT_PROJECTION = "attention_output"


def _projection_weights(layer):
    """``{(projection, "kernel" | "bias"): variable}`` of a MultiHeadAttention, by weight path."""
    weights = {}
    for v in layer.weights:
        sub, kind = v.path.split("/")[-2:]
        if sub in _PROJECTIONS or sub == _OUTPUT_PROJECTION:
            weights[(sub, kind)] = v
    return weights


def _attention_output_shape(layer, query):
    """The shape a MultiHeadAttention projects each position to (its ``output_shape`` or the query's width)."""
    shape = layer.get_config()["output_shape"]
    return (int(query.shape[-1]),) if not shape else tuple(int(d) for d in shape)


def _take(value, index, axis):
    return value if index is None else np.take(value, index, axis=axis)


class Attention(ChannelRule):
    """keras.layers.MultiHeadAttention: reads query, value and key like Dense layers do, and holds
    two spaces of its own: its heads and its output.

    * query/value/key channels are read on the projection kernels' axis 0 (as a Dense reads);
    * the heads are a space inside the call (:meth:`ChannelGraph.inner_space`): a head goes
      whole, its query, key, value and output-projection slices together, and ``num_heads``
      says how many are left; their gate sits inside the layer
      (:class:`~pn_tf.layers.HeadGatedAttention`, see :meth:`with_inner_gate`);
    * the output (the output projection's units, config ``output_shape``) is a new space like a
      Dense's, tied to the residual stream where a residual Add reads it.

    MACs: the query, key and value projections (``positions * C_in * heads * key_dim`` each),
    the token-by-token products QK^T and AV (``heads * pairs * key_dim``, ``heads * pairs *
    value_dim``, where ``pairs`` are the (query, key) position pairs that attend) and the
    output projection (``positions * heads * value_dim * C_out``).
    """

    kind = MIX

    def flow(self, graph, op, node):
        call = dict(zip(_ATTENTION_ARGS, node.arguments.args), **node.arguments.kwargs)
        query, value = call["query"], call["value"]
        key = value if call.get("key") is None else call["key"]
        q_atoms, v_atoms = graph.read(op, "dense", query), graph.read(op, "dense", value)
        k_atoms = v_atoms if key is value else graph.read(op, "dense", key)
        for t in node.input_tensors:  # an attention mask
            if all(t is not u for u in (query, value, key)):
                graph.fix(graph.read(op, "opaque", t), f"mask of attention '{op.name}'")
        gate = getattr(op, "head_gate", None)
        heads = graph.inner_space(op, op.num_heads, gate.name if gate is not None else None,
                                  element_channels=op.key_dim)
        if call.get("return_attention_scores"):
            graph.fix([heads], f"attention '{op.name}' returns its scores, whose shape holds the heads")
        out_shape = _attention_output_shape(op, query)
        y = node.output_tensors[0]
        out = graph.new_atom(y.shape[-1], op.name,
                             "" if len(out_shape) == 1 else f"attention '{op.name}' has a multi-axis output_shape")
        self._costs(graph, op, (query, value, key), (q_atoms, v_atoms, k_atoms), heads, out, out_shape)
        graph.set(y, [out])
        for scores in node.output_tensors[1:]:
            graph.set(scores, [graph.new_atom(scores.shape[-1] or 1, op.name, "attention scores")])
        graph.record(op, q_atoms + v_atoms + k_atoms, (heads, out))

    @staticmethod
    def _costs(graph, op, tensors, atoms, heads, out, out_shape):
        (query, value, key), (q_atoms, v_atoms, k_atoms) = tensors, atoms
        q_pos, k_pos, v_pos = (spatial_size(t.shape) for t in (query, key, value))
        attended = [key.shape[1:-1][axis - 1] for axis in op.attention_axes]
        pairs = q_pos * math.prod(int(d) for d in attended)
        graph.add_cost(op, "attention_query", q_pos * op.key_dim, q_atoms, (heads,))
        graph.add_cost(op, "attention_key", k_pos * op.key_dim, k_atoms, (heads,))
        graph.add_cost(op, "attention_value", v_pos * op.value_dim, v_atoms, (heads,))
        if op.get_config().get("use_gate"):
            graph.add_cost(op, "attention_gate", q_pos * op.value_dim, q_atoms, (heads,))
        graph.add_cost(op, "attention_scores", pairs * op.key_dim, (heads,), linear=True)
        graph.add_cost(op, "attention_context", pairs * op.value_dim, (heads,), linear=True)
        if len(out_shape) == 1:
            graph.add_cost(op, "attention_output", q_pos * op.value_dim, (heads,), (out,))
        else:
            graph.add_cost(op, "attention_output", q_pos * op.value_dim * math.prod(out_shape), (heads,),
                           linear=True)

    def nonlinear(self, op):
        return True  # softmax over the scores

    def shares_channels(self, op):
        return True

    def weight_axes(self, layer):
        return None  # sliced by transfer_weights

    @staticmethod
    def _kept(layer, change):
        """Kept positions of each part: query/value/key inputs, heads, output (None: all)."""
        if change is None:
            return dict.fromkeys(("query", "value", "key", "heads", "out"))
        widths = [int(layer.query_dense.kernel.shape[0]), int(layer.value_dense.kernel.shape[0]),
                  int(layer.key_dense.kernel.shape[0])]

        def part(index, start, stop):
            return index[(index >= start) & (index < stop)] - start

        starts = np.cumsum([0] + widths)
        kept = {name: part(change.in_index, starts[i], starts[i + 1])
                for i, name in enumerate(("query", "value", "key"))}
        kept["heads"] = part(change.out_index, 0, layer.num_heads)
        kept["out"] = part(change.out_index, layer.num_heads, change.out_size)
        return kept

    def narrow_config(self, layer, config, change):
        kept = self._kept(layer, change)
        config["num_heads"] = len(kept["heads"])
        shape = config.get("output_shape")
        if (shape and len(shape) == 1) or (not shape and len(kept["out"]) != len(kept["query"])):
            config["output_shape"] = (len(kept["out"]),)
        return config

    def transfer_weights(self, old, new, change):
        if change is None and type(old) is type(new):
            return False
        kept, source = self._kept(old, change), _projection_weights(old)
        one_axis_output = len(old.output_dense.kernel.shape) == 3
        for (sub, kind), variable in _projection_weights(new).items():
            value = np.asarray(source[(sub, kind)])
            if sub in _PROJECTIONS:  # kernel (C_in, heads, dim), bias (heads, dim)
                if kind == "kernel":
                    value = _take(value, kept[_PROJECTIONS[sub]], 0)
                value = _take(value, kept["heads"], 1 if kind == "kernel" else 0)
            else:  # kernel (heads, value_dim, *output_shape), bias (*output_shape)
                if kind == "kernel":
                    value = _take(value, kept["heads"], 0)
                if one_axis_output:
                    value = _take(value, kept["out"], -1)
            variable.assign(value)
        return True

    def filter_norms(self, layer):
        """L1 norm of each head's query, key, value (and gate) and output-projection kernels: the
        magnitude score of a head (for the L1 and uniform selections)."""
        norms = np.zeros(layer.num_heads)
        for (sub, kind), v in _projection_weights(layer).items():
            if kind != "kernel":
                continue
            kernel = np.abs(np.asarray(v))
            head_axis = 0 if sub == _OUTPUT_PROJECTION else 1
            norms += np.moveaxis(kernel, head_axis, 0).reshape(layer.num_heads, -1).sum(axis=1)
        return norms

    def with_inner_gate(self, layer, gate_name):
        from pn_tf.layers import HeadGatedAttention

        return HeadGatedAttention.gating(layer, gate_name)


class Separable(Producer):
    """SeparableConv1D/2D: a depthwise then a pointwise kernel; a new space on output."""

    def flow(self, graph, op, node):
        positions = spatial_size(node.output_tensors[0].shape)
        multiplier = op.depth_multiplier
        in_atoms, _ = self.produce(graph, op, node, "conv", [
            ("depthwise", math.prod(op.kernel_size) * positions * multiplier, True),
            ("conv", positions * multiplier, False)])
        if multiplier != 1:
            graph.fix(in_atoms, f"separable convolution '{op.name}' with depth_multiplier > 1")

    def weight_axes(self, layer):
        return [{-2: "in"}, {-2: "in", -1: "out"}] + ([{0: "out"}] if layer.use_bias else [])

    def filter_norms(self, layer):
        kernel = np.asarray(layer.pointwise_kernel)
        return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


class Depthwise(ChannelRule):
    """DepthwiseConv1D/2D: carries the space (multiplier 1); MACs linear in its width."""

    kind = CARRY

    def flow(self, graph, op, node):
        x, y = node.input_tensors[0], node.output_tensors[0]
        in_atoms = graph.segments(x)
        coef = math.prod(op.kernel_size) * spatial_size(y.shape)
        if op.depth_multiplier != 1:
            graph.read(op, "conv", x)
            out_atom = graph.new_atom(y.shape[-1], op.name)
            reason = f"depthwise convolution '{op.name}' with depth_multiplier > 1"
            graph.fix(in_atoms, reason)
            graph.fix([out_atom], reason)
            graph.add_cost(op, "depthwise", coef * op.depth_multiplier, in_atoms, linear=True)
            graph.set(y, [out_atom])
            graph.record(op, in_atoms, (out_atom,))
            return
        graph.read(op, "depthwise", x)
        graph.add_cost(op, "depthwise", coef, in_atoms, linear=True)
        graph.set(y, in_atoms, graph.masked_by(x) if graph.keeps_zero(node) else frozenset())
        graph.record(op, in_atoms, in_atoms)

    def keeps_zero(self, op, node):
        return not op.use_bias and _activation_keeps_zero(getattr(op, "activation", None))

    def nonlinear(self, op):
        return _activation_is_nonlinear(getattr(op, "activation", None))

    def shares_channels(self, op):
        return True

    def weight_axes(self, layer):
        return [{-2: "in"}] + ([{0: "in"}] if layer.use_bias else [])


class Merge(ChannelRule):
    """Element-wise op of several tensors: ties their spaces (residual adds, SE scaling).

    Args:
        zero: how a zero survives: ``"all"`` (``0 + 0``: zero only where every input is),
            ``"any"`` (``0 * x``: zero where any input is) or ``"first"`` (``0 / y``).
    """

    kind = MERGE

    def __init__(self, zero="all"):
        self.zero = zero

    @property
    def additive(self):
        return self.zero == "all"

    def flow(self, graph, op, node):
        inputs, output = list(node.input_tensors), node.output_tensors[0]
        segments = [graph.segments(t) for t in inputs]
        widths = [t.shape[-1] for t in inputs]
        wide = [s for s, w in zip(segments, widths) if w != 1]
        for s, w in zip(segments, widths):
            if w == 1 and output.shape[-1] != 1:
                graph.fix(s, f"broadcast across channels in '{op.name}'")
        reference = wide[0] if wide else segments[0]
        if not graph.tie_all(wide):
            for s in wide:
                graph.fix(s, f"inputs of '{op.name}' are split into channel runs that do not line up")
        masks = [graph.masked_by(t) for t in inputs]
        if self.zero == "any":
            masked = frozenset().union(*masks)
        elif self.zero == "first":
            masked = masks[0]
        else:
            masked = frozenset.intersection(*masks)
        graph.set(output, reference, masked)
        graph.record(op, reference, reference, shares=False)

    def keeps_zero(self, op, node):
        return True


class Concat(ChannelRule):
    """Concatenation on the channel axis: spaces side by side (any other axis: opaque)."""

    kind = CONCAT

    def flow(self, graph, op, node):
        output = node.output_tensors[0]
        axis = op.axis  # keras.layers.Concatenate and keras.ops.concatenate both hold it
        if axis not in (-1, len(output.shape) - 1):
            # Along another axis (a class token before the patch tokens): every input holds the
            # same channels, which stay together, as in an addition.
            if any(len(t.shape) != len(output.shape) for t in node.input_tensors) or axis == 0:
                graph.opaque(op, node, f"'{op.name}' concatenates along axis {axis}, not the channels")
                return
            Merge("all").flow(graph, op, node)
            return
        inputs = node.input_tensors
        masked = frozenset().union(*(graph.masked_by(t) for t in inputs))
        atoms = tuple(a for t in inputs for a in graph.segments(t))
        graph.set(output, atoms, masked)
        graph.record(op, atoms, atoms, shares=False)

    def keeps_zero(self, op, node):
        return True


def channel_repeats(x_shape, y_shape):
    """How often a reshape from ``x_shape`` to ``y_shape`` repeats the channels along y's last axis.

    Reshapes keep row-major order, so when y's last axis is a multiple k of x's channel
    count C, y's last axis is k runs of the same C channels (Flatten: k = the spatial
    positions; a (1, 1, C) <-> (C,) move: k = 1). None when channels are split apart.
    """
    channels, last = x_shape[-1], y_shape[-1]
    if channels is None or last is None or last % channels:
        return None
    return last // channels


class Reshape(ChannelRule):
    """Flatten/Reshape: channels stay the fastest-moving index, maybe repeated k times.

    ``Flatten`` of an (H, W, C) map is H*W runs of the C channels, so pruning channel c
    removes the rows ``p * C + c`` of the dense layer that reads it, for every position p.
    """

    kind = CARRY

    def flow(self, graph, op, node):
        x, y = node.input_tensors[0], node.output_tensors[0]
        repeats = channel_repeats(x.shape, y.shape)
        if repeats is None:
            graph.opaque(op, node, f"'{op.name}' moves channels into other axes")
            return
        atoms = tuple(graph.segments(x))
        graph.set(y, atoms * repeats, graph.masked_by(x))
        graph.record(op, atoms, atoms * repeats, shares=isinstance(op, keras.layers.Reshape))

    def keeps_zero(self, op, node):
        return True

    def narrow_config(self, layer, config, change):
        for key in ("target_shape", "newshape"):  # keras.layers.Reshape, keras.ops.reshape
            target = config.get(key)
            if target is not None and len(target) and target[-1] == change.out_size:
                config[key] = tuple(target[:-1]) + (len(change.out_index),)
        return config


class AxisOp(Carry):
    """A reduction, transpose or pad whose ``axis`` decides whether it keeps the channel axis.

    Args:
        keeps: ``(op, rank) -> bool``: whether the channel axis stays the last one, whole.
        what: what it does to channels otherwise (the fixed spaces' reason).
    """

    def __init__(self, keeps, what):
        super().__init__(weights=())
        self.keeps = keeps
        self.what = what

    def flow(self, graph, op, node):
        if not self.keeps(op, len(node.input_tensors[0].shape)):
            graph.opaque(op, node, f"'{op.name}' {self.what}")
            return
        super().flow(graph, op, node)


def _reduces_other_axes(op, rank):
    axis = getattr(op, "axis", None)
    return axis is not None and (rank - 1) not in _axes(axis, rank)


def _keeps_last_axis(op, rank):
    dims = getattr(op, "dims", None)  # keras.layers.Permute: 1-based, batch excluded
    if dims is not None:
        return dims[-1] == rank - 1
    axes = getattr(op, "axes", None)
    return axes is not None and axes[-1] % rank == rank - 1


class Index(Carry):
    """``x[...]`` (keras.ops.get_item): keeps the channels when the key indexes other axes only
    (``x[:, 0]``, the class token); else opaque."""

    def __init__(self):
        super().__init__(weights=(), keeps_zero=True)

    def flow(self, graph, op, node):
        args = node.arguments.args
        key = args[1] if len(args) > 1 else node.arguments.kwargs.get("key")
        rank = len(node.input_tensors[0].shape)
        key = key if isinstance(key, (tuple, list)) else (key,)
        simple = all(isinstance(k, (int, slice)) and not isinstance(k, bool) for k in key)
        if not simple or len(key) >= rank:
            graph.opaque(op, node, f"'{op.name}' indexes the channel axis")
            return
        super().flow(graph, op, node)

    def shares_channels(self, op):
        return False


def _tiles_other_axes(op, rank):
    repeats = getattr(op, "repeats", None)
    repeats = [repeats] if isinstance(repeats, int) else list(repeats or [])
    return bool(repeats) and repeats[-1] == 1


def _pads_other_axes(op, rank):
    widths = getattr(op, "pad_width", None)
    return widths is not None and [int(w) for w in widths[-1]] == [0, 0]


class ElementwiseOp(Carry):
    """A ``keras.ops`` element-wise call on one tensor, maybe with constants (``x + 3.0``).

    Constants with one value per channel (last axis = the channel count) are sliced at
    extraction; a constant that widens the channel axis makes the op opaque.
    """

    elementwise = True

    def __init__(self, nonlinear=False):
        super().__init__(weights=(), nonlinear=nonlinear)

    def flow(self, graph, op, node):
        tensors = node.input_tensors
        if len(tensors) > 1:
            Merge(_MERGE_ZERO.get(type(op).__name__, "all")).flow(graph, op, node)
            return
        super().flow(graph, op, node)

    def keeps_zero(self, op, node):
        return zero_in_zero_out(op, node)

    def shares_channels(self, op):
        return False

    def narrow_arguments(self, node, args, kwargs, change):
        def narrow(value):
            if isinstance(value, np.ndarray) and value.ndim and value.shape[-1] == change.in_size > 1:
                return np.take(value, change.in_index, axis=-1)
            return value

        return [narrow(a) for a in args], {k: narrow(v) for k, v in kwargs.items()}


def _moves_other_axes(op, rank):
    """Whether a roll or take along ``op.axis`` leaves the channel axis alone (None: flattened)."""
    axis = getattr(op, "axis", None)
    return axis is not None and (rank - 1) not in _axes(axis, rank)


class Unstack(ChannelRule):
    """``keras.ops.unstack(x, axis)``: along another axis, every piece keeps ``x``'s channels."""

    kind = CARRY

    def flow(self, graph, op, node):
        x = node.input_tensors[0]
        rank = len(x.shape)
        if rank < 2 or (rank - 1) in _axes(op.axis, rank):
            graph.opaque(op, node, f"'{op.name}' splits the channel axis")
            return
        atoms = graph.segments(x)
        for y in node.output_tensors:
            graph.set(y, atoms, graph.masked_by(x))
        graph.record(op, atoms, atoms, shares=False)

    def keeps_zero(self, op, node):
        return True


def _operands(node, names=("x1", "x2")):
    """The two operands of a binary keras.ops call (tensors or constants), as recorded."""
    args = list(node.arguments.args)
    for name in names[len(args):]:
        args.append(node.arguments.kwargs.get(name))
    return args[:2]


class MatMul(ChannelRule):
    """``keras.ops.matmul(a, b)`` (``a @ b``), the token-by-token products of an attention written
    with ops: the output's channels are ``b``'s last axis, carried (a zero column of ``b`` gives a
    zero column of the output); ``a``'s last axis is contracted against ``b``'s rows, so its
    spaces stay. MACs: ``prod(output sizes but the batch) * K`` per channel of ``b``. A product
    with a vector or with sizes unknown until run time is opaque, its MACs named uncounted."""

    kind = CARRY

    def flow(self, graph, op, node):
        a, b = _operands(node)
        y = node.output_tensors[0]
        shapes = [tuple(getattr(v, "shape", ())) for v in (a, b)]
        if (any(len(s) < 2 for s in shapes) or shapes[0][-1] is None
                or any(d is None for d in y.shape[1:])):
            graph.opaque(op, node, "multiplies a vector or sizes known only at run time: its "
                                   "channels are left unpruned")
            return
        coef = math.prod(int(d) for d in y.shape[1:-1]) * int(shapes[0][-1])
        if isinstance(a, keras.KerasTensor):
            graph.fix(graph.read(op, "opaque", a), f"'{op.name}' contracts its channels with the rows "
                                                   "of another matrix (matmul)")
        if isinstance(b, keras.KerasTensor):
            atoms = graph.read(op, "depthwise", b)
            graph.set(y, atoms, graph.masked_by(b) if graph.keeps_zero(node) else frozenset())
        else:
            atoms = (graph.new_atom(y.shape[-1], op.name, "channels made by a constant matrix (matmul)"),)
            graph.set(y, atoms)
        graph.add_cost(op, "matmul", coef, atoms, linear=True)
        graph.record(op, atoms, atoms, shares=False)

    def keeps_zero(self, op, node):
        return isinstance(_operands(node)[1], keras.KerasTensor)


def einsum_op_macs(subscripts, shapes):
    """MACs of one example through ``keras.ops.einsum(subscripts, *operands)`` of ``shapes``: the
    product of the sizes of every index (the batch counted as 1 where an operand has it), or None
    (an ellipsis, or a size unknown)."""
    inputs = subscripts.replace(" ", "").split("->")[0].split(",")
    if "." in subscripts or len(inputs) != len(shapes):
        return None
    sizes = {}
    for letters, shape in zip(inputs, shapes):
        if len(letters) != len(shape):
            return None
        for letter, d in zip(letters, shape):
            sizes[letter] = d if d is not None else sizes.get(letter)
    batch = [letters[0] for letters, shape in zip(inputs, shapes) if shape and shape[0] is None]
    for letter in batch:
        sizes[letter] = 1
    if any(v is None for v in sizes.values()):
        return None
    return math.prod(int(v) for v in sizes.values())


class Einsum(ChannelRule):
    """``keras.ops.einsum``: channels left unpruned (any contraction), MACs counted from the
    subscripts (an attention written with einsum)."""

    def flow(self, graph, op, node):
        y = node.output_tensors[0]
        shapes = [tuple(getattr(v, "shape", ())) for v in node.arguments.args]
        macs = einsum_op_macs(getattr(op, "subscripts", ""), shapes)
        graph.opaque(op, node, f"computes '{getattr(op, 'subscripts', '?')}': its MACs are counted, "
                               "its channels left unpruned")
        if macs is not None and len(y.shape) and y.shape[-1]:  # else the graph names it uncounted
            graph.add_cost(op, "einsum", macs / int(y.shape[-1]), graph.segments(y), linear=True)


_MERGE_ZERO = {"Multiply": "any", "Divide": "first", "TrueDivide": "first"}


class Gate(ChannelRule):
    """pn-tf's ChannelGate: declares a prunable group; its zeros survive until revived."""

    kind = CARRY

    def flow(self, graph, op, node):
        graph.gate(op, node)

    def keeps_zero(self, op, node):
        return True

    def weight_axes(self, layer):
        return [{0: "in"} for _ in layer.weights]


class Embedding(ChannelRule):
    """keras.layers.Embedding: looks rows up by index; its output is a new space (the row width,
    ``output_dim``), its input indices are not channels. A lookup has no MACs."""

    kind = MIX

    def flow(self, graph, op, node):
        x, y = node.input_tensors[0], node.output_tensors[0]
        graph.fix(graph.read(op, "opaque", x), f"indices of embedding '{op.name}'")
        out = graph.new_atom(y.shape[-1], op.name)
        graph.set(y, [out])
        graph.record(op, (), (out,))

    def shares_channels(self, op):
        return True

    def weight_axes(self, layer):
        return [{1: "out"} for _ in layer.weights]

    def narrow_config(self, layer, config, change):
        config["output_dim"] = len(change.out_index)
        return config


class ParameterRule(ChannelRule):
    """pn-tf's Parameter (a weight of an unrolled layer, as a layer output): its last axis is a new
    space, sliced like a bias; its input only gives the batch size."""

    kind = MIX

    def flow(self, graph, op, node):
        y = node.output_tensors[0]
        if not len(y.shape):
            graph.opaque(op, node, "is a scalar")
            return
        out = graph.new_atom(y.shape[-1] or 1, op.name)
        graph.set(y, [out])
        graph.record(op, (), (out,))

    def keeps_zero(self, op, node):
        return False

    def shares_channels(self, op):
        return True

    def weight_axes(self, layer):
        return [{len(layer.shape) - 1: "out"}]

    def narrow_config(self, layer, config, change):
        config["shape"] = list(config["shape"][:-1]) + [len(change.out_index)]
        return config


class ZeroPad(ChannelRule):
    """pn-tf's ChannelZeroPad (option-A shortcut): new zero channels around the space."""

    kind = CARRY

    def flow(self, graph, op, node):
        x, y = node.input_tensors[0], node.output_tensors[0]
        atoms = graph.segments(x)
        front = [graph.new_atom(op.before, op.name, "zero padding")] if op.before else []
        back = [graph.new_atom(op.after, op.name, "zero padding")] if op.after else []
        graph.set(y, tuple(front) + tuple(atoms) + tuple(back), graph.masked_by(x))

    def keeps_zero(self, op, node):
        return True


# -- the registry -------------------------------------------------------------------

_RULES = {}


def register_rule(cls, rule):
    """Makes ``rule`` (a :class:`ChannelRule`) describe ``cls`` and its subclasses.

    Registering a class again replaces its rule (a user may override a built-in one).
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_rule needs a class, got {cls!r}")
    if not isinstance(rule, ChannelRule):
        raise TypeError(f"register_rule needs a ChannelRule, got {type(rule).__name__}")
    _RULES[cls] = rule
    return rule


def unregister_rule(cls):
    """Removes the rule registered for exactly ``cls`` (no-op if there is none)."""
    _RULES.pop(cls, None)


_DEFAULT = Opaque()


_CHANNELS_FIRST = Opaque("works on channels_first data; pn-tf reads channels on the last axis",
                         warn=True)


def has_rule(op):
    """Whether a rule is registered for ``op``'s class or one of its bases (not the default)."""
    return any(cls in _RULES for cls in type(op).__mro__)


def rule_for(op):
    """The rule for ``op`` (a layer or ``keras.ops`` operation), by its class's MRO."""
    if getattr(op, "data_format", None) == "channels_first":
        return _CHANNELS_FIRST
    if _OP_CLASSES is None and not isinstance(op, keras.layers.Layer):
        _ensure_ops()
    for cls in type(op).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
    return _DEFAULT


def tflite_for(op):
    """What TFLite makes of ``op``'s layer type: its rule's :class:`TFLite` (by the class's MRO).

    Unlike :func:`rule_for`, a channels_first layer still has its type's declaration (TFLite
    fuses it all the same).
    """
    for cls in type(op).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule.tflite
    return _DEFAULT.tflite


def _register_builtins():
    L = keras.layers
    carry = Carry()
    for cls in (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
                L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.Rescaling,
                L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D,
                L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D,
                L.GlobalAveragePooling2D, L.GlobalAveragePooling3D, L.GlobalMaxPooling1D,
                L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.ZeroPadding1D,
                L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D,
                L.UpSampling2D, L.UpSampling3D):
        register_rule(cls, carry)
    # What TFLite fuses, for the latency units: BN and activations fold into the conv, dense
    # or addition before them; XNNPACK folds a zero pad into the 2-D convolution it feeds.
    register_rule(L.Identity, carry.with_tflite(fuses_into_previous=True))
    register_rule(L.ZeroPadding2D, carry.with_tflite(pad=True))
    for name in ("AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D", "AdaptiveAveragePooling3D",
                 "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D",
                 "RepeatVector", "ActivityRegularization", "Resizing", "CenterCrop", "RandomFlip",
                 "RandomRotation", "RandomZoom", "RandomTranslation", "RandomCrop", "RandomContrast",
                 "RandomBrightness"):
        if hasattr(L, name):  # spatial or per-value ops: channels pass through
            register_rule(getattr(L, name), carry)
    register_rule(L.Permute, AxisOp(_keeps_last_axis, "moves the channel axis"))
    for name, what in (("LSTM", "is recurrent"), ("GRU", "is recurrent"), ("SimpleRNN", "is recurrent"),
                       ("RNN", "is recurrent"), ("Bidirectional", "is recurrent"),
                       ("ConvLSTM1D", "is recurrent"), ("ConvLSTM2D", "is recurrent"),
                       ("ConvLSTM3D", "is recurrent"), ("TimeDistributed", "wraps another layer"),
                       ("Attention", "is attention"),
                       ("AdditiveAttention", "is attention"),
                       ("Masking", "masks time steps by all their channels"),
                       ("SpectralNormalization", "wraps another layer")):
        if hasattr(L, name):
            register_rule(getattr(L, name), Opaque(f"{what}: pn-tf does not prune it", warn=True))
    activation = Activation()
    for cls in (L.Activation, L.ReLU):
        register_rule(cls, activation.with_tflite(fuses_into_previous=True))
    for cls in (L.LeakyReLU, L.PReLU, L.ELU):
        register_rule(cls, activation)
    register_rule(L.Softmax, Couple("normalizes across channels (softmax)"))
    register_rule(L.BatchNormalization, BatchNorm().with_tflite(fuses_into_previous=True))
    register_rule(L.Normalization, Normalization())
    register_rule(L.GroupNormalization, GroupNorm())
    register_rule(L.LayerNormalization, AxisNormalization())
    if hasattr(L, "RMSNormalization"):
        register_rule(L.RMSNormalization, AxisNormalization())
    register_rule(L.UnitNormalization, Couple("normalizes across its channels (unit norm)"))
    register_rule(L.Conv1D, Convolution().with_tflite(fusion_target=True))
    register_rule(L.Conv2D, Convolution().with_tflite(fusion_target=True, absorbs_pad=True))
    register_rule(L.Conv3D, Convolution())
    register_rule(L.Conv1DTranspose, Convolution(transpose=True))
    register_rule(L.Conv2DTranspose, Convolution(transpose=True).with_tflite(fusion_target=True))
    register_rule(L.Conv3DTranspose, Convolution(transpose=True))
    register_rule(L.Dense, Dense().with_tflite(fusion_target=True))
    register_rule(L.EinsumDense, EinsumDense())
    register_rule(L.Embedding, Embedding())
    register_rule(L.MultiHeadAttention, Attention())
    register_rule(L.DepthwiseConv1D, Depthwise())
    register_rule(L.DepthwiseConv2D, Depthwise().with_tflite(fusion_target=True, absorbs_pad=True))
    register_rule(L.SeparableConv1D, Separable())
    register_rule(L.SeparableConv2D, Separable().with_tflite(fusion_target=True, absorbs_pad=True))
    register_rule(L.Add, Merge("all").with_tflite(fusion_target=True))
    for cls in (L.Subtract, L.Average, L.Maximum, L.Minimum):
        register_rule(cls, Merge("all"))
    register_rule(L.Multiply, Merge("any"))
    register_rule(L.Concatenate, Concat())
    register_rule(L.Flatten, Reshape())
    register_rule(L.Reshape, Reshape())
    _register_applications()
    _register_pn_tf()


# keras.ops functions whose calls a functional graph records as nodes, by their public
# names. Keras has no public name for the operation classes these calls record, so the
# classes are read off the public functions: each is applied once to symbolic inputs
# (:func:`keras_op_class`), and the recorded operation's type gets the rule.
_OPS_BINARY = ("add", "subtract", "multiply", "divide", "true_divide", "maximum", "minimum", "power")
_OPS_ELEMENTWISE = ("negative", "absolute", "square", "sqrt", "exp", "expm1", "log", "log1p",
                    "clip", "sign", "round", "floor", "ceil", "reciprocal", "tanh", "sin", "cos",
                    "sinh", "cosh", "arctan", "arcsinh", "copy", "cast")
_OPS_ACTIVATIONS = ("relu", "relu6", "sigmoid", "hard_sigmoid", "silu", "hard_silu", "gelu", "elu",
                    "selu", "leaky_relu", "softplus", "softsign", "celu", "log_sigmoid", "hard_tanh",
                    "soft_shrink", "hard_shrink", "tanh_shrink", "squareplus", "sparse_plus",
                    "sparse_sigmoid", "threshold")
_OPS_REDUCTIONS = ("mean", "max", "min", "sum", "amax", "amin")

# How to call each function on symbolic inputs x, y of shape (None, 4, 4, 3), where the
# plain ``f(x)`` (or ``f(x, y)`` for a binary one) does not do.
_OP_CALLS = {
    "clip": lambda f, x, y: f(x, 0.0, 1.0),
    "cast": lambda f, x, y: f(x, "float16"),
    "threshold": lambda f, x, y: f(x, 0.5, 0.0),
    "concatenate": lambda f, x, y: f([x, y]),
    "reshape": lambda f, x, y: f(x, (-1, 4, 12)),
    "expand_dims": lambda f, x, y: f(x, 1),
    "squeeze": lambda f, x, y: f(keras.ops.expand_dims(x, 1), 1),
    "pad": lambda f, x, y: f(x, ((0, 0), (1, 1), (1, 1), (0, 0))),
    "image.resize": lambda f, x, y: f(x, (2, 2)),
    "tile": lambda f, x, y: f(x, (1, 2, 1, 1)),
    "get_item": lambda f, x, y: f(x, (slice(None), 0)),
    "matmul": lambda f, x, y: f(x, keras.ops.transpose(y, (0, 1, 3, 2))),
    "einsum": lambda f, x, y: f("bijc,bijd->bicd", x, y),
    "roll": lambda f, x, y: f(x, 1, axis=1),
    "take": lambda f, x, y: f(x, np.array([0, 1]), axis=1),
    "unstack": lambda f, x, y: f(x, axis=1)[0],
    **{name: (lambda f, x, y: f(x, axis=(1, 2))) for name in _OPS_REDUCTIONS},
    **{name: (lambda f, x, y: f(x, y)) for name in _OPS_BINARY},
}

_OP_CLASSES = None  # {public keras.ops function name: the operation class its call records}
_OPS_LOCK = threading.Lock()


def _probe_op_classes():
    """``{name: class}`` for every function named above that Keras has and records as a node.

    Done once, on the first lookup of an operation that is not a layer (see :func:`rule_for`):
    the probe's operations take automatic names ("add", "relu", ...), which must not rename
    the ops of a model built before pn-tf first looks at it.
    """
    names = (_OPS_BINARY + _OPS_ELEMENTWISE + _OPS_ACTIVATIONS + _OPS_REDUCTIONS
             + ("softmax", "log_softmax", "concatenate", "reshape", "expand_dims", "squeeze",
                "transpose", "pad", "image.resize", "tile", "get_item", "matmul", "einsum", "roll", "take",
                "unstack"))
    x = keras.Input((4, 4, 3), name="pn_tf_probe_x")
    y = keras.Input((4, 4, 3), name="pn_tf_probe_y")
    classes, missing = {}, []
    for name in names:
        function = keras.ops
        for part in name.split("."):
            function = getattr(function, part, None)
        if function is None:
            missing.append(f"keras.ops.{name} (not in this Keras)")
            continue
        call = _OP_CALLS.get(name, lambda f, x, y: f(x))
        try:
            output = call(function, x, y)
            operations = keras.Model([x, y], output, name="pn_tf_probe").operations
        except Exception as error:  # noqa: BLE001 - a changed signature: say which, go on
            missing.append(f"keras.ops.{name} ({type(error).__name__}: {error})")
            continue
        op = operations[-1]  # topological order: the op that made the output is last
        if isinstance(op, keras.layers.InputLayer):
            missing.append(f"keras.ops.{name} (records no operation on a symbolic tensor)")
            continue
        classes[name] = type(op)
    if missing:
        log.warning("pn-tf could not find the graph operations of %d keras.ops functions, so "
                    "their nodes in a functional model are opaque (left unpruned): %s. Keras "
                    "changed these functions; pn-tf's rules in pn_tf/graph/rules.py need the "
                    "new call.", len(missing), "; ".join(missing))
    return classes


def keras_op_class(name):
    """The operation class that the public function ``keras.ops.<name>`` records in a graph.

    ``name`` is a public name ("add", "softmax", "image.resize"); None when this Keras has
    no such function or it records no operation.
    """
    _ensure_ops()
    return _OP_CLASSES.get(name)


def _ensure_ops():
    global _OP_CLASSES
    if _OP_CLASSES is not None:
        return
    with _OPS_LOCK:
        if _OP_CLASSES is None:
            classes = _probe_op_classes()
            _register_ops(classes)
            _OP_CLASSES = classes


def _register_ops(classes):
    """Rules for the keras.ops operations; a rule a user registered first for one is kept."""

    def register(name, rule):
        cls = classes.get(name)
        if cls is not None and cls not in _RULES:
            register_rule(cls, rule)

    for name in _OPS_BINARY + _OPS_ELEMENTWISE:
        register(name, ElementwiseOp())
    for name in _OPS_ACTIVATIONS:
        register(name, ElementwiseOp(nonlinear=True))
    for name in ("softmax", "log_softmax"):
        register(name, Couple("normalizes across channels (softmax)"))
    register("concatenate", Concat())
    for name in ("reshape", "expand_dims", "squeeze"):
        register(name, Reshape())
    for name in _OPS_REDUCTIONS:
        register(name, AxisOp(_reduces_other_axes, "reduces over channels"))
    register("transpose", AxisOp(_keeps_last_axis, "moves the channel axis"))
    register("pad", AxisOp(_pads_other_axes, "pads the channel axis"))
    register("image.resize", Carry(weights=()))
    register("tile", AxisOp(_tiles_other_axes, "repeats the channel axis"))
    register("get_item", Index())
    register("matmul", MatMul())
    register("roll", AxisOp(_moves_other_axes, "rolls along the channel axis"))
    register("take", AxisOp(_moves_other_axes, "takes along the channel axis"))
    register("unstack", Unstack())
    register("einsum", Einsum())


def _register_applications():
    """The keras.applications families' own layers (ConvNeXt, InceptionResNetV2).

    Keras exports no public name for these classes (keras.applications.convnext exports the
    model functions only, and the layers are not in the serialization registry), so they are
    read from Keras's source modules. If Keras moved them, their layers stay opaque (left
    unpruned) and one warning says so.
    """
    wanted = (("convnext", "LayerScale", Carry(weights="auto", keeps_zero=True,
                                               config_channels=("projection_dim",))),
              ("inception_resnet_v2", "CustomScaleLayer", Merge("all")))
    for family, name, rule in wanted:
        try:
            module = importlib.import_module(f"keras.src.applications.{family}")
            cls = getattr(module, name)
        except (ImportError, AttributeError):
            log.warning("pn-tf found no keras.src.applications.%s.%s in Keras %s (Keras moved "
                        "or renamed it): the %s layers of keras.applications.%s models are "
                        "opaque (left unpruned)", family, name, keras.__version__, name, family)
            continue
        register_rule(cls, rule)


def _register_pn_tf():
    from pn_tf.layers import ChannelGate, ChannelShuffle, ChannelSplit, ChannelZeroPad, Parameter

    register_rule(ChannelGate, Gate())
    register_rule(ChannelZeroPad, ZeroPad())
    register_rule(Parameter, ParameterRule())
    register_rule(ChannelSplit, Opaque("splits the channel axis into parts"))
    register_rule(ChannelShuffle, Opaque("reorders channels (shuffle)"))


_register_builtins()
