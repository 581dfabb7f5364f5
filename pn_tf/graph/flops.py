"""Exact multiply-accumulate counts, and the same count as a function of the gates.

METHOD.md item 3. A convolution costs ``k_h * k_w * (C_in / groups) * C_out * H_out *
W_out`` MACs (counted as "FLOPs", as the papers do), a depthwise convolution
``k_h * k_w * C * H_out * W_out`` and a dense layer ``C_in * C_out`` (per position).
BN, activations, pooling and additions are not counted.

With the channel widths written as gate sums, ``c_g = sum(a_g)``, every term is a
constant, linear or bilinear function of the ``c_g``:

    T(a) = sum_e coef_e * (fixed_in_e + sum_g n_in[e, g] c_g) * (fixed_out_e + sum_g n_out[e, g] c_g)

``T(1) = T_all`` is the whole network; ``T_total`` is the part that depends on some
gate ("prunable FLOPs"). With 0/1 gates T(a) is exactly the MAC count of the network
built at the kept widths, depthwise convs included (the reference code's depthwise
term is exact only at full width).
"""

import numpy as np
from keras import ops

from pn_tf.graph.channels import ChannelGraph


class FlopsModel:
    """T(a) for the groups of a :class:`ChannelGraph`.

    Args:
        graph: a ChannelGraph, or a functional keras.Model to analyse.

    Attributes:
        total: T_all, the MACs of the unpruned network.
        prunable: T_total, the MACs of the layers whose cost depends on a group.
        widths: the full width of each group, in group order.
        name: "FLOPs" (how messages name the budget; the latency model's is "latency").
    """

    name = "FLOPs"
    unit = "MACs"

    def __init__(self, graph):
        if not isinstance(graph, ChannelGraph):
            graph = ChannelGraph(graph)
        self.graph = graph
        group_of_root = {graph.root(g.atoms[0]): g.index for g in graph.groups}
        num_groups = len(graph.groups)
        terms = graph.costs
        self.layers = [t.layer for t in terms]
        self.kinds = [t.kind for t in terms]
        self.coef = np.array([t.coef for t in terms], dtype=np.float64)
        self.fixed_in = np.zeros(len(terms))
        self.fixed_out = np.ones(len(terms))
        self.n_in = np.zeros((len(terms), num_groups))
        self.n_out = np.zeros((len(terms), num_groups))
        for e, term in enumerate(terms):
            self._fill(graph, group_of_root, term.in_atoms, self.fixed_in, self.n_in, e)
            if not term.linear:
                self.fixed_out[e] = 0.0
                self._fill(graph, group_of_root, term.out_atoms, self.fixed_out, self.n_out, e)
        self.widths = np.array([g.size for g in graph.groups], dtype=np.float64)
        self.term_flops = self._terms(self.widths)
        self.total = float(self.term_flops.sum())
        depends = (self.n_in.sum(1) + self.n_out.sum(1)) > 0
        self.prunable = float(self.term_flops[depends].sum())

    @staticmethod
    def _fill(graph, group_of_root, atoms, fixed, counts, e):
        for a in atoms:
            g = group_of_root.get(graph.root(a))
            if g is None:
                fixed[e] += graph.atoms[a].size
            else:
                counts[e, g] += 1

    def _terms(self, widths):
        widths = np.asarray(widths, dtype=np.float64)
        c_in = self.fixed_in + self.n_in @ widths
        c_out = self.fixed_out + self.n_out @ widths
        return self.coef * c_in * c_out

    def count(self, widths=None):
        """Exact MACs with ``widths[g]`` channels kept in group g (default: all)."""
        if widths is None:
            return self.total
        widths = np.asarray(widths, dtype=np.float64)
        if widths.shape != self.widths.shape:
            raise ValueError(f"need {len(self.widths)} group widths, got shape {widths.shape}")
        return float(self._terms(widths).sum())

    def __call__(self, gate_vectors):
        """Differentiable T(a) from one gate vector per group (soft or hard)."""
        if len(gate_vectors) != len(self.widths):
            raise ValueError(f"need {len(self.widths)} gate vectors, got {len(gate_vectors)}")
        if not gate_vectors:
            return ops.convert_to_tensor(self.total, dtype="float32")
        sums = ops.stack([ops.sum(ops.cast(a, "float32")) for a in gate_vectors])
        c_in = ops.convert_to_tensor(self.fixed_in, "float32") + ops.matmul(
            ops.convert_to_tensor(self.n_in, "float32"), sums)
        c_out = ops.convert_to_tensor(self.fixed_out, "float32") + ops.matmul(
            ops.convert_to_tensor(self.n_out, "float32"), sums)
        return ops.sum(ops.convert_to_tensor(self.coef, "float32") * c_in * c_out)

    def p_for_reduction(self, reduction):
        """The regularizer's p for removing ``reduction`` of T_all (supplement B).

        ``p * T_total = (1 - reduction) * T_all``; for 50% this is the paper's
        ``p = 0.5 * T_all / T_total``.
        """
        if not 0.0 < reduction < 1.0:
            raise ValueError(f"target FLOPs reduction must be in (0, 1), got {reduction}")
        p = (1.0 - reduction) * self.total / self.prunable
        floor = (self.total - self.prunable) / self.prunable
        if p <= floor:
            raise ValueError(
                f"cannot remove {reduction:.0%} of FLOPs: only {self.prunable / self.total:.1%} "
                "of this network's FLOPs are prunable"
            )
        return p

    def reduction_for_p(self, p):
        """The fraction of T_all removed when T(a) = p * T_total."""
        return 1.0 - p * self.prunable / self.total

    def table(self, widths=None):
        """Per-layer rows ``(layer, kind, MACs)`` at ``widths`` (default: full)."""
        flops = self._terms(self.widths if widths is None else widths)
        return list(zip(self.layers, self.kinds, flops))


def count_params(model):
    """Trainable parameters of the network itself (gate logits excluded).

    Matches the published convention (BN's running statistics are buffers, not
    parameters).
    """
    from pn_tf.layers import ChannelGate

    gate_weights = {id(w) for layer in model._flatten_layers() if isinstance(layer, ChannelGate)
                    for w in layer.weights}
    return int(sum(np.prod(w.shape) for w in model.trainable_weights if id(w) not in gate_weights))
