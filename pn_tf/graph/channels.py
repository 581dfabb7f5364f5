"""Channel-dependency analysis of a functional Keras model.

One engine serves the zoo and users' own models: it walks the Keras graph once and
tracks, for every tensor, which *channel spaces* its last axis is made of.

* A space ("atom") is born where a layer creates new channels (Conv2D, Dense, the
  model input, a layer the engine cannot reason about) and flows unchanged through
  per-channel layers (BN, activations, pooling, depthwise convs, gates).
* Element-wise merges (Add, Multiply, ...) tie the spaces of their inputs: removing
  channel k from one input means removing it from all (a union-find).
* Concatenate lays spaces side by side; the consumers slice each part.
* Anything the engine cannot follow (Lambda, custom layers, reshapes that mix the
  channel axis, the model's outputs) makes the spaces it touches *fixed*.

A ``ChannelGate`` on a tensor declares that tensor's space a prunable *group*. For
hard gates to be equivalent to physically removing channels, every convolution or
dense layer that reads the group must read it through that gate with nothing in
between that can turn a zero back into a non-zero value (a bias, BN, a sigmoid);
the analysis checks this and explains any violation.
"""

import dataclasses
import logging

import keras

from pn_tf.layers import ChannelGate, ChannelShuffle, ChannelSplit, ChannelZeroPad

log = logging.getLogger(__name__)

# Layers that act on each channel independently and keep the channel count.
PER_CHANNEL = (
    keras.layers.BatchNormalization,
    keras.layers.Normalization,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.Identity,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
    keras.layers.UpSampling2D,
    keras.layers.Rescaling,
    keras.layers.DepthwiseConv2D,
)
MERGES = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.Average,
)
# f(0) == 0, so a zeroed (pruned) channel stays zero through these activations.
ZERO_PRESERVING_ACTIVATIONS = {
    "relu", "relu6", "linear", "tanh", "elu", "selu", "gelu", "silu", "swish",
    "hard_silu", "hard_swish", "leaky_relu", "mish",
}


@dataclasses.dataclass
class Atom:
    """A run of channels created together (one producer's output)."""

    index: int
    size: int
    origin: str
    fixed_reason: str = ""


@dataclasses.dataclass
class CostTerm:
    """Multiply-accumulates of one layer call: ``coef * c_in * c_out`` (or ``coef * c``).

    ``in_atoms``/``out_atoms`` are the atoms making up the counted channel axes;
    ``linear`` terms (depthwise convs) only depend on ``in_atoms``.
    """

    layer: str
    kind: str
    coef: float
    in_atoms: tuple
    out_atoms: tuple = ()
    linear: bool = False


@dataclasses.dataclass
class ChannelGroup:
    """Channels that must be removed together; the unit a gate controls.

    Attributes:
        index: position in :attr:`ChannelGraph.groups` (gate order).
        gate: name of the ChannelGate layer that controls it (None if ungated).
        size: number of channels.
        atoms: the atom indices tied into this group.
        producers: layers whose output channels are this group (sliced on output).
        carriers: per-channel layers on the group (BN, depthwise, ... sliced).
        consumers: layers reading the group as input channels (sliced on input).
    """

    index: int
    gate: str
    size: int
    atoms: tuple
    producers: list
    carriers: list
    consumers: list


class GraphAnalysisError(ValueError):
    """The model's gates or layers are inconsistent with channel pruning."""


class _UnionFind:
    def __init__(self):
        self.parent = []

    def add(self):
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i, j):
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def _activation_name(layer):
    if isinstance(layer, keras.layers.Activation):
        fn = layer.activation
        return getattr(fn, "__name__", str(fn))
    if isinstance(layer, keras.layers.ReLU):
        return "relu" if float(layer.threshold) == 0.0 else "relu_threshold"
    if isinstance(layer, (keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU)):
        return "leaky_relu"
    return None


def keeps_zero(layer):
    """Whether a pruned (all-zero) channel is still zero after ``layer``."""
    if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Normalization,
                          keras.layers.Rescaling)):
        return False
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return not layer.use_bias and layer.activation in (None, keras.activations.linear)
    name = _activation_name(layer)
    if name is not None:
        return name in ZERO_PRESERVING_ACTIVATIONS
    return True


def _spatial(shape):
    size = 1
    for d in shape[1:-1]:
        if d is None:
            raise GraphAnalysisError(
                "FLOPs need a static input size: build the model with a fixed (height, width)"
            )
        size *= int(d)
    return size


class ChannelGraph:
    """The channel spaces, groups and costs of a built functional Keras model.

    Args:
        model: a functional ``keras.Model`` with static input shapes.
        strict: bool. Raise if a gate cannot be made equivalent to removing
            channels (default); otherwise the gate's group is dropped with a warning.

    Attributes:
        groups: list of :class:`ChannelGroup`, one per ChannelGate, in graph order.
        costs: list of :class:`CostTerm`, one per conv/depthwise/dense call.
        atoms: list of :class:`Atom`.
    """

    def __init__(self, model, strict=True):
        if not hasattr(model, "_nodes_by_depth"):
            raise GraphAnalysisError(
                f"{model.name} is not a functional Keras model; build it with keras.Model(inputs, outputs)"
            )
        self.model = model
        self.strict = strict
        self.atoms = []
        self.costs = []
        self.warnings = []
        self._uf = _UnionFind()
        self._segments = {}  # id(tensor) -> tuple of atom indices
        self._masked = {}  # id(tensor) -> frozenset of gate names zeroing it
        self._gate_atom = {}  # gate name -> atom index
        self._reads = []  # (layer name, role, atoms, masked gate names)
        self._layer_atoms = {}  # layer name -> (in atoms, out atoms)
        self._read_tensors = []  # the tensor of each entry of _reads
        self.birth = {}  # atom index -> the first tensor made of that atom alone
        for node in self._topological_nodes():
            self._visit(node)
        for tensor in keras.tree.flatten(model.outputs):
            self._read(f"model output {tensor.name}", "output", tensor)
            self._fix(self._segments[id(tensor)], "reaches the model output")
        self.groups = self._resolve_groups()

    # -- traversal ---------------------------------------------------------------

    def _topological_nodes(self):
        for depth in sorted(self.model._nodes_by_depth, reverse=True):
            yield from self.model._nodes_by_depth[depth]

    def _new_atom(self, size, origin, fixed_reason=""):
        index = self._uf.add()
        self.atoms.append(Atom(index, int(size), origin, fixed_reason))
        return index

    def _fix(self, atoms, reason):
        for a in atoms:
            if not self.atoms[a].fixed_reason:
                self.atoms[a].fixed_reason = reason

    def _set(self, tensor, atoms, masked=frozenset()):
        self._segments[id(tensor)] = tuple(atoms)
        self._masked[id(tensor)] = frozenset(masked)
        if len(atoms) == 1:
            self.birth.setdefault(tuple(atoms)[0], tensor)

    def _read(self, layer_name, role, tensor):
        atoms = self._segments[id(tensor)]
        self._reads.append((layer_name, role, atoms, self._masked[id(tensor)]))
        self._read_tensors.append(tensor)
        return atoms

    def segments(self, tensor):
        """The atoms laid side by side along ``tensor``'s channel axis."""
        return self._segments[id(tensor)]

    def masked_by(self, tensor):
        """Names of the gates whose zeros are guaranteed to survive up to ``tensor``."""
        return self._masked[id(tensor)]

    def reads(self):
        """``(layer name, role, atoms, tensor)`` for every layer call that reads channels.

        Roles: ``"conv"``/``"dense"`` (mix channels: must read a gated group through
        its gate), ``"depthwise"`` (carries them), ``"opaque"``, ``"output"``.
        """
        return [(name, role, atoms, t) for (name, role, atoms, _), t in zip(self._reads, self._read_tensors)]

    def _visit(self, node):
        layer = node.operation
        inputs = list(node.input_tensors)
        outputs = list(node.output_tensors)
        if node.is_input or isinstance(layer, keras.layers.InputLayer):
            for t in outputs:
                self._set(t, [self._new_atom(t.shape[-1], layer.name, "model input")])
            return
        in_atoms = [self._segments[id(t)] for t in inputs]
        name = layer.name
        if isinstance(layer, ChannelGate):
            (atoms,) = in_atoms
            if len(atoms) != 1:
                raise GraphAnalysisError(f"{name}: a gate must sit on the output of one layer, not a concatenation")
            previous = self._gate_atom.setdefault(name, atoms[0])
            self._uf.union(previous, atoms[0])
            self._set(outputs[0], atoms, self._masked[id(inputs[0])] | {name})
            self._layer_atoms.setdefault(name, (atoms, atoms))
        elif isinstance(layer, keras.layers.SeparableConv2D):
            self._separable(layer, inputs[0], outputs[0])
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            self._depthwise(layer, inputs[0], outputs[0])
        elif isinstance(layer, keras.layers.Conv2D):
            self._conv(layer, inputs[0], outputs[0])
        elif isinstance(layer, keras.layers.Dense):
            self._dense(layer, inputs[0], outputs[0])
        elif isinstance(layer, PER_CHANNEL):
            (atoms,) = in_atoms
            masked = self._masked[id(inputs[0])] if keeps_zero(layer) else frozenset()
            self._set(outputs[0], atoms, masked)
            self._layer_atoms.setdefault(name, (atoms, atoms))
        elif isinstance(layer, MERGES):
            self._merge(layer, inputs, outputs[0])
        elif isinstance(layer, keras.layers.Concatenate) and layer.axis in (-1, len(outputs[0].shape) - 1):
            masked = frozenset().union(*(self._masked[id(t)] for t in inputs))
            atoms = tuple(a for seg in in_atoms for a in seg)
            self._set(outputs[0], atoms, masked)
            self._layer_atoms.setdefault(name, (atoms, atoms))
        elif isinstance(layer, (keras.layers.Flatten, keras.layers.Reshape)) and self._keeps_channel_axis(inputs[0], outputs[0]):
            self._set(outputs[0], in_atoms[0], self._masked[id(inputs[0])])
            self._layer_atoms.setdefault(name, (in_atoms[0], in_atoms[0]))
        elif isinstance(layer, ChannelZeroPad):
            (atoms,) = in_atoms
            pad = [self._new_atom(n, name, "zero padding") for n in (layer.before, layer.after) if n]
            front = pad[:1] if layer.before else []
            back = pad[-1:] if layer.after else []
            self._set(outputs[0], tuple(front) + tuple(atoms) + tuple(back), self._masked[id(inputs[0])])
        else:
            self._opaque(layer, inputs, outputs, known=isinstance(layer, (ChannelSplit, ChannelShuffle)))

    def _keeps_channel_axis(self, x, y):
        return x.shape[-1] == y.shape[-1] and all(d == 1 for d in x.shape[1:-1]) and all(
            d == 1 for d in y.shape[1:-1]
        )

    def _opaque(self, layer, inputs, outputs, known=False):
        reason = f"passes through {type(layer).__name__} '{layer.name}', which mixes or reorders channels"
        if not known:
            reason = f"passes through {type(layer).__name__} '{layer.name}', which pn-tf cannot analyse"
            message = f"layer '{layer.name}' ({type(layer).__name__}) is opaque to channel analysis; its channels are left unpruned"
            self.warnings.append(message)
            log.warning(message)
        for t in inputs:
            self._fix(self._read(layer.name, "opaque", t), reason)
        for t in outputs:
            channels = t.shape[-1] if len(t.shape) else 1
            self._set(t, [self._new_atom(channels or 1, layer.name, reason)])

    def _merge(self, layer, inputs, output):
        segments = [self._segments[id(t)] for t in inputs]
        widths = [t.shape[-1] for t in inputs]
        wide = [s for s, w in zip(segments, widths) if w != 1]
        for s, w in zip(segments, widths):
            if w == 1 and output.shape[-1] != 1:
                self._fix(s, f"broadcast across channels in '{layer.name}'")
        reference = wide[0] if wide else segments[0]
        aligned = all(
            len(s) == len(reference) and all(self.atoms[a].size == self.atoms[b].size for a, b in zip(s, reference))
            for s in wide
        )
        if aligned:
            for s in wide[1:]:
                for a, b in zip(s, reference):
                    self._uf.union(a, b)
        else:
            for s in wide:
                self._fix(s, f"inputs of '{layer.name}' are split into channel runs that do not line up")
        masks = [self._masked[id(t)] for t in inputs]
        if isinstance(layer, keras.layers.Multiply):
            masked = frozenset().union(*masks)  # 0 * x == 0
        else:
            masked = frozenset.intersection(*masks)  # 0 + 0 == 0
        self._set(output, reference, masked)
        self._layer_atoms.setdefault(layer.name, (reference, reference))

    def _conv(self, layer, x, y):
        in_atoms = self._read(layer.name, "conv", x)
        kh, kw = layer.kernel_size
        out_atom = self._new_atom(layer.filters, layer.name)
        coef = kh * kw * _spatial(y.shape) / layer.groups
        if layer.groups != 1:
            reason = f"grouped convolution '{layer.name}'"
            self._fix(in_atoms, reason)
            self._fix([out_atom], reason)
        self.costs.append(CostTerm(layer.name, "conv", coef, in_atoms, (out_atom,)))
        self._set(y, [out_atom])
        self._layer_atoms.setdefault(layer.name, (in_atoms, (out_atom,)))

    def _depthwise(self, layer, x, y):
        in_atoms = self._segments[id(x)]
        kh, kw = layer.kernel_size
        coef = kh * kw * _spatial(y.shape)
        if layer.depth_multiplier != 1:
            self._read(layer.name, "conv", x)
            out_atom = self._new_atom(y.shape[-1], layer.name)
            self._fix(in_atoms, f"depthwise convolution '{layer.name}' with depth_multiplier > 1")
            self._fix([out_atom], f"depthwise convolution '{layer.name}' with depth_multiplier > 1")
            self.costs.append(CostTerm(layer.name, "depthwise", coef * layer.depth_multiplier, in_atoms, linear=True))
            self._set(y, [out_atom])
            self._layer_atoms.setdefault(layer.name, (in_atoms, (out_atom,)))
            return
        self._read(layer.name, "depthwise", x)
        self.costs.append(CostTerm(layer.name, "depthwise", coef, in_atoms, linear=True))
        masked = self._masked[id(x)] if keeps_zero(layer) else frozenset()
        self._set(y, in_atoms, masked)
        self._layer_atoms.setdefault(layer.name, (in_atoms, in_atoms))

    def _separable(self, layer, x, y):
        in_atoms = self._read(layer.name, "conv", x)
        kh, kw = layer.kernel_size
        spatial = _spatial(y.shape)
        if layer.depth_multiplier != 1:
            self._fix(in_atoms, f"separable convolution '{layer.name}' with depth_multiplier > 1")
        out_atom = self._new_atom(layer.filters, layer.name)
        self.costs.append(CostTerm(layer.name, "depthwise", kh * kw * spatial * layer.depth_multiplier, in_atoms, linear=True))
        self.costs.append(CostTerm(layer.name, "conv", spatial * layer.depth_multiplier, in_atoms, (out_atom,)))
        self._set(y, [out_atom])
        self._layer_atoms.setdefault(layer.name, (in_atoms, (out_atom,)))

    def _dense(self, layer, x, y):
        in_atoms = self._read(layer.name, "dense", x)
        out_atom = self._new_atom(layer.units, layer.name)
        positions = _spatial(y.shape) if len(y.shape) > 2 else 1
        self.costs.append(CostTerm(layer.name, "dense", positions, in_atoms, (out_atom,)))
        self._set(y, [out_atom])
        self._layer_atoms.setdefault(layer.name, (in_atoms, (out_atom,)))

    # -- groups ------------------------------------------------------------------

    def root(self, atom):
        return self._uf.find(atom)

    def fixed_reason(self, atom):
        """Why the space holding ``atom`` cannot be pruned ("" if it can)."""
        root = self.root(atom)
        for a in self.atoms:
            if self.root(a.index) == root and a.fixed_reason:
                return f"{a.origin}: {a.fixed_reason}"
        return ""

    def _resolve_groups(self):
        gate_of_root = {}
        for gate, atom in self._gate_atom.items():
            root = self.root(atom)
            if root in gate_of_root:
                self._problem(
                    f"gates '{gate_of_root[root]}' and '{gate}' control the same channels "
                    "(tied by a residual or merge); use one gate layer for them"
                )
                continue
            reason = self.fixed_reason(atom)
            if reason:
                self._problem(f"gate '{gate}' sits on channels that cannot be pruned ({reason})")
                continue
            gate_of_root[root] = gate
        for layer_name, role, atoms, masked in self._reads:
            for a in atoms:
                gate = gate_of_root.get(self.root(a))
                if gate and gate not in masked and role in ("conv", "dense"):
                    self._problem(
                        f"'{layer_name}' reads the channels of gate '{gate}' without passing that gate "
                        "after the last bias/normalisation; hard gates would not equal removed channels"
                    )
                    gate_of_root = {r: g for r, g in gate_of_root.items() if g != gate}
        groups = []
        # Gate order is the model's layer order (what gate_layers() and the search use).
        layer_order = {layer.name: i for i, layer in enumerate(self.model.layers)}
        ordered = sorted(self._gate_atom, key=lambda g: layer_order.get(g, len(layer_order)))
        for gate in ordered:
            root = self.root(self._gate_atom[gate])
            if gate_of_root.get(root) != gate:
                continue
            members = tuple(a.index for a in self.atoms if self.root(a.index) == root)
            groups.append(self._make_group(len(groups), gate, root, members))
        return groups

    def _problem(self, message):
        if self.strict:
            raise GraphAnalysisError(message)
        self.warnings.append(message)
        log.warning(message)

    def _make_group(self, index, gate, root, members):
        producers, carriers, consumers = [], [], []
        for layer_name, (ins, outs) in self._layer_atoms.items():
            touches_in = any(self.root(a) == root for a in ins)
            touches_out = any(self.root(a) == root for a in outs)
            if touches_out and not touches_in:
                producers.append(layer_name)
            elif touches_in and not touches_out:
                consumers.append(layer_name)
            elif touches_in and touches_out and layer_name != gate:
                carriers.append(layer_name)
        return ChannelGroup(index, gate, self.atoms[root].size, members, producers, carriers, consumers)

    def prunable_spaces(self, min_size=2):
        """Every channel space that could be pruned, gated or not, in graph order.

        A space is a union-find root none of whose atoms is fixed (model input or
        output, an opaque layer, a grouped convolution, ...) and that has at least
        ``min_size`` channels. Returned as :class:`ChannelGroup` objects whose
        ``gate`` is the controlling gate's name if the space is a declared group,
        else None; ``index`` numbers the spaces.
        """
        gate_of_root = {self.root(g.atoms[0]): g.gate for g in self.groups}
        fixed = set()
        for a in self.atoms:
            if a.fixed_reason:
                fixed.add(self.root(a.index))
        members = {}
        for a in self.atoms:
            members.setdefault(self.root(a.index), []).append(a.index)
        spaces = []
        for root, atoms in members.items():
            if root in fixed or self.atoms[root].size < min_size:
                continue
            spaces.append(self._make_group(len(spaces), gate_of_root.get(root), root, tuple(atoms)))
        return spaces

    def layer_atoms(self, layer_name):
        """(input atoms, output atoms) of a layer's first call."""
        return self._layer_atoms[layer_name]

    def group_of_atom(self, atom):
        root = self.root(atom)
        for g in self.groups:
            if self.root(g.atoms[0]) == root:
                return g
        return None
