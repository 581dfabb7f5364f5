"""Channel-dependency analysis of a Keras model (functional, Sequential or nested).

One engine serves the zoo and users' own models: it walks the Keras graph once and
tracks, for every tensor, which *channel spaces* its last axis is made of.

* A space ("atom") is born where a layer creates new channels (Conv2D, Dense, the
  model input, a layer the engine cannot reason about) and flows unchanged through
  per-channel layers (BN, activations, pooling, depthwise convs, gates).
* Element-wise merges (Add, Multiply, ...) tie the spaces of their inputs: removing
  channel k from one input means removing it from all (a union-find).
* Concatenate lays spaces side by side; the consumers slice each part.
* Anything the engine cannot follow (Lambda, custom layers without a rule, reshapes
  that split the channel axis, the model's outputs) makes the spaces it touches *fixed*.

What each layer type does to channels is not written here: the engine walks the
nodes and asks each operation's rule (:mod:`pn_tf.graph.rules`). Sequential models
and nested sub-models are first flattened into one graph (:mod:`pn_tf.graph.replay`).

A ``ChannelGate`` on a tensor declares that tensor's space a prunable *group*. For
hard gates to be equivalent to physically removing channels, every convolution or
dense layer that reads the group must read it through that gate with nothing in
between that can turn a zero back into a non-zero value (a bias, BN, a sigmoid);
the analysis checks this and explains any violation.
"""

import dataclasses
import logging
import math

import keras

from pn_tf.graph import rules
from pn_tf.graph.errors import GraphAnalysisError

log = logging.getLogger(__name__)


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
        granule: channels are removed in aligned runs of this many (1: one by one;
            C/G where a GroupNormalization with G groups normalizes the space).
    """

    index: int
    gate: str
    size: int
    atoms: tuple
    producers: list
    carriers: list
    consumers: list
    granule: int = 1


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


# Operation types that multiply tensors together (no weights of their own): with no MAC term
# from their rule they are named as uncounted.
_MULTIPLYING = frozenset({"Matmul", "Einsum", "Tensordot", "Dot", "Inner", "Outer", "Vdot", "Kron",
                          "Attention", "AdditiveAttention"})


class ChannelGraph:
    """The channel spaces, groups and costs of a built Keras model.

    Args:
        model: a functional or Sequential ``keras.Model`` with static input shapes;
            nested functional/Sequential sub-models are analysed through (the graph
            is read from :func:`pn_tf.graph.replay.flatten`, available as ``model``).
        strict: bool. Raise if a gate cannot be made equivalent to removing
            channels (default); otherwise the gate's group is dropped with a warning.

    Attributes:
        model: the flat functional model the analysis read (``model`` itself when it
            was flat already).
        groups: list of :class:`ChannelGroup`, one per ChannelGate, in graph order.
        costs: list of :class:`CostTerm`, one per conv/depthwise/dense call.
        atoms: list of :class:`Atom`.
        opaque_layers: names of the operations without a rule (their channels stay).
        uncounted_layers: layers computing with weight matrices whose MACs no rule counts (a
            user's layer that cannot be unrolled, an LSTM): named in a warning, left out of the FLOPs.
        warnings: messages about opaque layers and dropped gates.
    """

    def __init__(self, model, strict=True):
        from pn_tf.graph.replay import batch_rows, flatten

        self.model = flatten(model)
        self.strict = strict
        self.atoms = []
        self.costs = []
        self.warnings = []
        self.opaque_layers = []
        self._uf = _UnionFind()
        self._segments = {}  # id(tensor) -> tuple of atom indices
        self._masked = {}  # id(tensor) -> frozenset of gate names zeroing it
        self._gate_atom = {}  # gate name -> atom index
        self._gate_owner = {}  # gate held inside a layer (attention heads) -> that layer's name
        self._inner = {}  # atom index -> the layer whose call alone holds the space (inner_space)
        self._element_channels = {}  # inner-space atom -> kernel channels per element
        self._reads = []  # (layer name, role, atoms, masked gate names)
        self._layer_atoms = {}  # operation name -> (in atoms, out atoms) of its first call
        self._calls = {}  # operation name -> [(in atoms, out atoms)] of every call, in order
        self._operations = {}  # operation name -> operation
        self._labels = {}  # id(operation) -> its name here (keras.ops nodes may share names)
        self._taken = {layer.name for layer in self.model.layers}
        self._read_tensors = []  # the tensor of each entry of _reads
        self._granule = {}  # atom index -> channels removable only together (GroupNormalization)
        self._keeps_zero = {}  # id(node) -> bool
        self.birth = {}  # atom index -> the first tensor made of that atom alone
        self.batch_rows = batch_rows(self.model)  # id(tensor) -> rows per example (windows)
        self._factor = 1  # the visited call's: its MAC terms count every row of one example
        for node in self._topological_nodes():
            self._visit(node)
        for tensor in keras.tree.flatten(self.model.outputs):
            self._read(f"model output {tensor.name}", "output", tensor)
            self.fix(self._segments[id(tensor)], "reaches the model output")
        self.groups = self._resolve_groups()
        self.uncounted_layers = self._uncounted()

    def _uncounted(self):
        """Layers that multiply by weight matrices (a weight of rank 2 or more; embeddings look
        rows up and are not counted) or multiply tensors together (matmul, einsum, dot products,
        weightless attention) but have no MAC term: a warning names them, so a FLOPs count that
        misses them is never taken for the whole network's silently."""
        from pn_tf.layers import Parameter

        counted = {term.layer for term in self.costs}
        names = [self.label(op) for op in self.model.operations
                 if self.label(op) not in counted and not isinstance(op, (keras.layers.Embedding, Parameter))
                 and (any(len(w.shape) >= 2 for w in getattr(op, "weights", ()))
                      or type(op).__name__ in _MULTIPLYING)]
        if names:
            message = (f"the MACs of {len(names)} layer(s) are not counted in pn-tf's FLOPs (no rule "
                       f"counts them): {', '.join(names)}; FLOPs totals and cuts leave them out")
            self.warnings.append(message)
            log.warning(message)
        return names

    # -- traversal ---------------------------------------------------------------

    def _topological_nodes(self):
        for depth in sorted(self.model._nodes_by_depth, reverse=True):
            yield from self.model._nodes_by_depth[depth]

    def _visit(self, node):
        op = node.operation
        if node.is_input or isinstance(op, keras.layers.InputLayer):
            for t in node.output_tensors:
                self.set(t, [self.new_atom(t.shape[-1] or 1, op.name, "model input")])
            return
        self._factor = self.batch_rows.get(id(node.output_tensors[0]), 1) if node.output_tensors else 1
        try:
            rules.rule_for(op).flow(self, op, node)
        finally:
            self._factor = 1

    def name_of(self, op):
        """The name of ``op`` in this graph (a layer's own name; keras.ops nodes made unique)."""
        label = self._labels.get(id(op))
        if label is None:
            label = op.name
            if not isinstance(op, keras.layers.Layer):
                k = 1
                while label in self._taken:
                    k += 1
                    label = f"{op.name}_{k}"
                self._taken.add(label)
            self._labels[id(op)] = label
        return label

    def label(self, op):
        """The name ``op``'s calls are recorded under here (:meth:`name_of`), else its own name
        (a layer that extraction narrowed is a new object of the same name)."""
        return self._labels.get(id(op), op.name)

    def operation(self, name):
        """The layer or keras.ops operation called ``name`` here."""
        return self._operations[name]

    def keeps_zero(self, node):
        """Whether ``node``'s operation keeps an all-zero channel zero (its rule, cached)."""
        key = id(node)
        if key not in self._keeps_zero:
            self._keeps_zero[key] = rules.rule_for(node.operation).keeps_zero(node.operation, node)
        return self._keeps_zero[key]

    # -- primitives the rules use (pn_tf.graph.rules) -------------------------------

    def new_atom(self, size, origin, fixed_reason=""):
        """A new channel space of ``size`` channels created by ``origin``."""
        index = self._uf.add()
        self.atoms.append(Atom(index, int(size), getattr(origin, "name", origin), fixed_reason))
        return index

    def fix(self, atoms, reason):
        """Marks ``atoms`` unprunable, with ``reason`` (the first reason given is kept)."""
        for a in atoms:
            if not self.atoms[a].fixed_reason:
                self.atoms[a].fixed_reason = reason

    def set(self, tensor, atoms, masked=frozenset()):
        """Declares ``tensor``'s channel axis as ``atoms`` side by side, zeroed by ``masked`` gates."""
        self._segments[id(tensor)] = tuple(atoms)
        self._masked[id(tensor)] = frozenset(masked)
        if len(atoms) == 1:
            self.birth.setdefault(tuple(atoms)[0], tensor)

    def read(self, op, role, tensor):
        """Records that ``op`` reads ``tensor``'s channels as ``role``; returns its atoms.

        Roles: ``"conv"``/``"dense"`` (mix channels: must read a gated group through its
        gate), ``"depthwise"`` (carries them), ``"couple"``, ``"opaque"``, ``"output"``.
        """
        return self._read(self.name_of(op) if not isinstance(op, str) else op, role, tensor)

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
        """``(layer name, role, atoms, tensor)`` for every call that reads channels (see :meth:`read`);
        ``tensor`` is None where a layer reads a space inside its own call (:meth:`inner_space`)."""
        return [(name, role, atoms, t) for (name, role, atoms, _), t in zip(self._reads, self._read_tensors)]

    def inner_space(self, op, size, gate=None, reason="", element_channels=1):
        """A space of ``size`` channels that exists only inside ``op``'s call; returns its atom.

        Attention heads are one: a MultiHeadAttention makes them (query, key and value
        projections) and reads them (its output projection), and no tensor between layers
        carries them on its last axis. ``op`` is recorded reading the space as ``"dense"``,
        through ``gate`` (the name of a ChannelGate that ``op`` holds and applies to the space
        before reading it) when it has one. Such a space is gated by swapping the layer for
        its rule's gated copy (:meth:`ChannelRule.with_inner_gate`), not by a gate on a tensor.
        ``element_channels``: how many channels of the kernels one element of the space stands
        for (a head: its ``key_dim``), what the latency tables count (:meth:`element_channels`).
        """
        name = self.name_of(op)
        atom = self.new_atom(size, name, reason)
        self._inner[atom] = name
        self._element_channels[atom] = int(element_channels)
        masked = frozenset()
        if gate:
            self.tie(self._gate_atom.setdefault(gate, atom), atom)
            self._gate_owner[gate] = name
            masked = frozenset({gate})
        self._reads.append((name, "dense", (atom,), masked))
        self._read_tensors.append(None)
        return atom

    def element_channels(self, atom):
        """Kernel channels per element of ``atom``'s space: 1, or what :meth:`inner_space` was
        told (a head stands for ``key_dim`` channels of the projections: the runtime's kernels,
        and a latency table's channel tiles, see channels, not heads)."""
        return self._element_channels.get(atom, 1)

    def inner_owner(self, atom):
        """The layer whose call alone holds ``atom``'s space (:meth:`inner_space`), else None."""
        root = self.root(atom)
        return next((owner for a, owner in self._inner.items() if self.root(a) == root), None)

    def add_cost(self, op, kind, coef, in_atoms, out_atoms=(), linear=False):
        """MACs of one call: ``coef * c_in * c_out`` (``coef * c_in`` when ``linear``), ``coef`` per
        batch row, times the rows per example of the visited call's output (:func:`~pn_tf.graph.replay.batch_rows`)."""
        self.costs.append(CostTerm(self.name_of(op), kind, float(coef) * self._factor, tuple(in_atoms),
                                   tuple(out_atoms), linear))

    def tie(self, a, b):
        """Ties two atoms into one space (removing channel k of one removes it of the other)."""
        self._uf.union(a, b)

    def tie_all(self, segment_lists):
        """Ties equal-length runs of atoms position by position; False if they do not line up."""
        if not segment_lists:
            return True
        reference = segment_lists[0]
        for s in segment_lists[1:]:
            if len(s) != len(reference) or any(self.atoms[a].size != self.atoms[b].size
                                               for a, b in zip(s, reference)):
                return False
        for s in segment_lists[1:]:
            for a, b in zip(s, reference):
                self.tie(a, b)
        return True

    def set_granule(self, atom, channels):
        """Channels of ``atom``'s space go in aligned runs of ``channels`` (GroupNormalization)."""
        self._granule[atom] = math.lcm(self._granule.get(atom, 1), channels)

    def record(self, op, in_atoms, out_atoms, shares=True):
        """The channel axes of ``op``'s call (extraction slices its weights by them).

        A layer called several times (a shared layer, a sub-model used twice) holds one
        set of weights, so with ``shares`` its later calls are tied to its first one.
        """
        name = self.name_of(op)
        self._calls.setdefault(name, []).append((tuple(in_atoms), tuple(out_atoms)))
        first = self._layer_atoms.get(name)
        if first is None:
            self._layer_atoms[name] = (tuple(in_atoms), tuple(out_atoms))
            self._operations[name] = op
            return
        if not shares:
            return
        for old, new in zip(first, (tuple(in_atoms), tuple(out_atoms))):
            if not self.tie_all([old, new]):
                reason = (f"shared layer '{name}' is called on channels that do not line up (its "
                          "calls hold one set of weights, so their channels stay)")
                self.fix(old + new, reason)
                if reason not in self.warnings:
                    self.warnings.append(reason)
                    log.warning(reason)

    def opaque(self, op, node, reason="", warn=False):
        """``op``'s inputs and outputs stay unpruned.

        Without a ``reason`` the operation is unknown: a warning names it and says how
        to register a rule for it. With ``warn`` the reason is logged too.
        """
        name = self.name_of(op)
        if reason:
            reason = f"{type(op).__name__} {reason}"
            if warn:
                message = f"layer '{name}' ({type(op).__name__}): {reason}; its channels are left unpruned"
                if message not in self.warnings:
                    self.warnings.append(message)
                    log.warning(message)
        else:
            from pn_tf.graph.replay import unroll_failure

            kind = type(op).__name__
            reason = f"passes through {kind} '{name}', which pn-tf cannot analyse"
            why = unroll_failure(op)
            why = f" (it could not be unrolled: {why})" if why else ""
            if isinstance(op, keras.Model):
                hint = "a subclassed model: pn-tf reads functional and Sequential models"
            else:
                hint = (f"register a rule for it with pn_tf.graph.register_rule({kind}, ...) "
                        "(docs/autoprune.md)")
            message = (f"layer '{name}' ({kind}) is opaque to channel analysis{why}; its channels are "
                       f"left unpruned; {hint}")
            self.warnings.append(message)
            self.opaque_layers.append(name)
            self._operations.setdefault(name, op)  # operation(name) finds it (it records no call)
            log.warning(message)
        for t in node.input_tensors:
            self.fix(self._read(name, "opaque", t), reason)
        for t in node.output_tensors:
            channels = t.shape[-1] if len(t.shape) else 1
            self.set(t, [self.new_atom(channels or 1, name, reason)])

    def gate(self, op, node):
        """A ChannelGate call: its input's space is the gate's group."""
        name = self.name_of(op)
        x, y = node.input_tensors[0], node.output_tensors[0]
        atoms = self.segments(x)
        if len(atoms) != 1:
            raise GraphAnalysisError(f"{name}: a gate must sit on the output of one layer, not a concatenation")
        previous = self._gate_atom.setdefault(name, atoms[0])
        self.tie(previous, atoms[0])
        self.set(y, atoms, self.masked_by(x) | {name})
        self.record(op, atoms, atoms, shares=False)

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
        # A gate held inside a layer comes with that layer (gate_layers() lists sub-layers there).
        layer_order = {layer.name: i for i, layer in enumerate(self.model.layers)}
        ordered = sorted(self._gate_atom, key=lambda g: layer_order.get(
            self._gate_owner.get(g, g), len(layer_order)))
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
        granule = math.lcm(*(self._granule.get(a, 1) for a in members))
        return ChannelGroup(index, gate, self.atoms[root].size, members, producers, carriers, consumers,
                            granule)

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

    def recorded(self):
        """``{name: (operation, in atoms, out atoms)}`` for every call the rules recorded."""
        return {name: (self._operations[name],) + atoms for name, atoms in self._layer_atoms.items()}

    def calls(self, name):
        """``[(in atoms, out atoms)]`` of every recorded call of operation ``name``, in order (a
        shared layer's later calls may be on other channel spaces than its first)."""
        return list(self._calls.get(name, ()))

    def group_of_atom(self, atom):
        root = self.root(atom)
        for g in self.groups:
            if self.root(g.atoms[0]) == root:
                return g
        return None
