"""L(a): the network's estimated TFLite latency as a function of its gates, like T(a) for FLOPs.

From a latency table (:mod:`pn_tf.latency.table`), every width-dependent unit's time is a
piecewise-linear function of its width fraction ``x_u`` (linear between the measured levels,
extended linearly beyond them, never below zero), and ``x_u`` is a product of affine functions
of the kept group widths ``c_g = sum(a_g)``; so

    L(a) = scale * (constant_ms + sum_u t_u(x_u(a))) + offset_ms

is, with 0/1 gates, the estimated latency of the network built at those widths (``scale > 0``
and ``offset_ms >= 0`` in tables of this version, :func:`~pn_tf.latency.table.fit_whole`, so
it stays positive and no cut is estimated at 100% or more).

That affine map from the unit sum ``S`` to the whole network's time is exact only where the
whole network's overheads are: Xception's whole network takes 1.2x its unit sum up to 4/16 of
its widths and 2.4x from 6/16 on, EfficientNetV2-B0's 1.5x at 1/16 and 1.2x at full width.
So the estimate goes through the measured whole networks instead: ``whole(S)`` is the
piecewise-linear curve through the table's uniform levels ``(S_k, W_k)`` (``S_k`` this
model's unit sum at level k, ``W_k`` the whole network timed there, made non-decreasing in
``S``), proportional to ``S`` below the narrowest level and beyond the widest, and

    L(a) = whole(constant_ms + sum_u t_u(x_u(a)))

is exact at every uniform level and, between them, scales the units' sum by the whole/unit
ratio measured at networks of about that size (:attr:`LatencyModel.whole_map`; tables without
whole-network times keep the affine map).

Channel counts go in whole kernel tiles (:mod:`pn_tf.latency.tiles`, the table's
``channel_tiles``): XNNPACK computes output channels in runs of 16 here, so 17 channels cost
what 32 do; a unit's width fraction counts its channels rounded up to whole tiles (output
tiles for its output and for a per-channel op; input tiles for a map's input). Its gradient
is taken from a smoothed twin: each unit's least-squares line through its knots instead of its
piecewise-linear curve (the value stays the table's). Measured curves are flat over whole
ranges of widths (a kernel that works on tiles of 8 or 16 output channels takes as long for 12
of them as for 16), and a regularizer whose gradient is zero there would never start pruning
those channels; the line gives every channel the unit's average cost per channel.
:class:`LatencyModel` has the interface of :class:`~pn_tf.graph.FlopsModel` (``total``,
``prunable``, ``widths``, ``graph``, ``count``, ``__call__``, ``p_for_reduction``,
``reduction_for_p``), so the search's regularizer and the channel selection take either.
"""

import numpy as np
from keras import ops

from pn_tf.latency.table import LatencyTableError, fit_problem, structure_key
from pn_tf.latency.tiles import tiled


class LatencyModel:
    """The latency estimate of a gated network from its table.

    Args:
        graph: the gated network's :class:`~pn_tf.graph.ChannelGraph`.
        table: a table dict (:func:`~pn_tf.latency.table.build_table` / ``load_table``).
        network: the gated network, to check the table was built for it (optional).

    Attributes:
        name: "latency" (how messages name the budget).
        total: the estimated ms of the unpruned network.
        prunable: ``total`` minus what no width changes (constant units and the offset).
        widths: the full width of each group.
        fit_problem: one line when the table's whole-model fit is beyond
            :data:`~pn_tf.latency.table.FIT_BAR_PCT` (its estimates are unreliable), else None.
    """

    name = "latency"
    unit = "ms"

    def __init__(self, graph, table, network=None):
        self.graph = graph
        self.table = table
        sizes = [g.size for g in graph.groups]
        if list(table["group_sizes"]) != sizes:
            raise LatencyTableError(
                f"the latency table was built for a network with groups {table['group_sizes']}, "
                f"this one has {sizes}; build a table for this network (tools/latency_model.py)")
        if network is not None and table.get("structure") not in (None, structure_key(network, graph)):
            raise LatencyTableError("the latency table was built for another network of the same "
                                    "group widths (its layers differ); build one for this network")
        self.widths = np.asarray(sizes, dtype=np.float64)
        units = table["units"]
        num_units, num_groups = len(units), len(sizes)
        knots = max([len(u["x"]) for u in units], default=1)
        self.in_fixed, self.out_fixed = np.zeros(num_units), np.zeros(num_units)
        self.in_n, self.out_n = np.zeros((num_units, num_groups)), np.zeros((num_units, num_groups))
        self.product = np.zeros(num_units)
        # t(x) = t0 + s0 (x - x0) + sum_j ds_j relu(x - x_j), j over the inner knots
        self.x0, self.t0, self.s0 = np.zeros(num_units), np.zeros(num_units), np.zeros(num_units)
        self.line = np.zeros((num_units, 2))  # the smoothed twin: t ~ line[0] + line[1] x
        self.inner = np.zeros((num_units, max(knots - 2, 1)))
        self.dslope = np.zeros((num_units, max(knots - 2, 1)))
        for u, unit in enumerate(units):
            self.in_fixed[u], self.out_fixed[u] = unit["in_fixed"], unit["out_fixed"]
            for g, n in unit["in_groups"].items():
                self.in_n[u, int(g)] = n
            for g, n in unit["out_groups"].items():
                self.out_n[u, int(g)] = n
            self.product[u] = float(unit["product"])
            xs, ts = np.asarray(unit["x"], float), np.asarray(unit["ms"], float)
            self.x0[u], self.t0[u] = xs[0], ts[0]
            self.line[u] = (np.polyfit(xs, ts, 1)[::-1] if len(xs) > 1 else (ts[0], 0.0))
            if len(xs) > 1:
                slopes = np.diff(ts) / np.diff(xs)
                self.s0[u] = slopes[0]
                self.inner[u, :len(xs) - 2] = xs[1:-1]
                self.dslope[u, :len(xs) - 2] = np.diff(slopes)
        self.full_in = self.in_fixed + self.in_n @ self.widths
        self.full_out = self.out_fixed + self.out_n @ self.widths
        # Channels count in whole kernel tiles (pn_tf.latency.tiles): a map's input channels in
        # input tiles; its output channels, and a per-channel op's channels, in output tiles.
        tiles = table.get("channel_tiles") or {}
        self.tiles = {"in": int(tiles.get("in", 1)), "out": int(tiles.get("out", 1))}
        self.in_tile = np.where(self.product > 0, self.tiles["in"], self.tiles["out"]).astype(np.float64)
        # a spatial convolution's output channels: "out_spatial" tiles above one such tile, the 1x1
        # tiles below (pn_tf.latency.tiles); other units: the 1x1 tiles throughout
        spatial = np.array([bool(u.get("spatial")) and "out_spatial" in tiles for u in units], bool)
        self.out_tile = np.where(spatial, float(tiles.get("out_spatial", 1)), float(self.tiles["out"]))
        self.out_small = np.full(num_units, float(self.tiles["out"]))
        self.scale, self.offset = float(table["scale"]), float(table["offset_ms"])
        self.constant = float(table["constant_ms"])
        self.whole_map = self._whole_map(table)
        self.total = self.count()
        self.prunable = self.total - self.whole(self.constant)
        self.fit_problem = fit_problem(table)

    def _whole_map(self, table):
        """``(S_k, W_k)``: this model's unit sums at the table's uniform levels and the whole
        network's time there (non-decreasing in S); None where the table has no whole times."""
        from pn_tf.latency.table import isotonic, kept_width

        whole, levels = table.get("whole_ms"), table.get("levels")
        if not whole or not levels or len(whole) != len(levels) or self.graph is None:
            return None
        sums = np.array([self.constant + self.unit_ms(
            [kept_width(g, f) for g in self.graph.groups]).sum() for f in levels])
        if np.any(sums <= 0):
            return None
        order = np.argsort(sums, kind="stable")
        sums, whole = sums[order], np.asarray(whole, float)[order]
        # levels of equal unit sums (groups too small to take every level): one point, averaged
        points = []
        for s, w in zip(sums, whole):
            if points and s - points[-1][0] <= 1e-9 * s:
                points[-1][1].append(w)
            else:
                points.append((s, [w]))
        s = np.array([p[0] for p in points])
        w = np.maximum(np.asarray(isotonic([float(np.mean(p[1])) for p in points])), 1e-9)
        return s, w

    def whole(self, units_sum):
        """The whole network's estimated ms for a unit sum (constant included; see the module)."""
        if self.whole_map is None:
            return self.scale * units_sum + self.offset
        s, w = self.whole_map
        if units_sum <= s[0]:
            return w[0] * units_sum / s[0]
        if units_sum >= s[-1]:
            return w[-1] * units_sum / s[-1]
        return float(np.interp(units_sum, s, w))

    def affine_count(self, widths=None):
        """The estimate by the table's affine fit ``scale * S + offset`` alone (for comparison)."""
        units = self.constant + self.unit_ms(None if widths is None else np.asarray(widths, np.float64)).sum()
        return max(float(self.scale * units + self.offset), 0.0)

    def _fractions(self, widths):
        x_in = tiled(self.in_fixed + self.in_n @ widths, self.in_tile, self.full_in) / self.full_in
        x_out = tiled(self.out_fixed + self.out_n @ widths, self.out_tile, self.full_out,
                      self.out_small) / self.full_out
        return x_in * np.where(self.product > 0, x_out, 1.0)

    def unit_ms(self, widths=None):
        """Each width-dependent unit's estimated ms at ``widths`` (default: full)."""
        widths = self.widths if widths is None else np.asarray(widths, dtype=np.float64)
        x = self._fractions(widths)
        t = (self.t0 + self.s0 * (x - self.x0)
             + np.sum(self.dslope * np.maximum(x[:, None] - self.inner, 0.0), axis=1))
        return np.maximum(t, 0.0)

    def count(self, widths=None):
        """Estimated ms with ``widths[g]`` channels kept in group g (default: all)."""
        if widths is not None:
            widths = np.asarray(widths, dtype=np.float64)
            if widths.shape != self.widths.shape:
                raise ValueError(f"need {len(self.widths)} group widths, got shape {widths.shape}")
        # max(0): a table of an earlier version may have a negative offset
        return max(float(self.whole(self.constant + self.unit_ms(widths).sum())), 0.0)

    def __call__(self, gate_vectors):
        """L(a) from one gate vector per group (soft or hard); gradient from the smoothed twin."""
        if len(gate_vectors) != len(self.widths):
            raise ValueError(f"need {len(self.widths)} gate vectors, got {len(gate_vectors)}")
        c = lambda v: ops.convert_to_tensor(v, "float32")  # noqa: E731
        sums = ops.stack([ops.sum(ops.cast(a, "float32")) for a in gate_vectors])
        in_count = c(self.in_fixed) + ops.matmul(c(self.in_n), sums)
        out_count = c(self.out_fixed) + ops.matmul(c(self.out_n), sums)
        product = c(self.product) > 0

        def tiled_tensor(count, tile, full, small=None):  # tiles.tiled on tensors
            if small is not None:
                return ops.where(count <= c(tile), tiled_tensor(count, small, full),
                                 tiled_tensor(count, tile, full))
            rounded = ops.minimum(ops.ceil(count / c(tile) - 1e-6) * c(tile), c(full))
            return ops.where(c(tile) > 1, rounded, count)

        def fraction(x_in, x_out):
            return x_in * ops.where(product, x_out, ops.ones_like(x_out))

        # the value counts whole tiles; the smoothed twin's gradient every channel
        x = fraction(tiled_tensor(in_count, self.in_tile, self.full_in) / c(self.full_in),
                     tiled_tensor(out_count, self.out_tile, self.full_out, self.out_small) / c(self.full_out))
        x_smooth = fraction(in_count / c(self.full_in), out_count / c(self.full_out))
        t = (c(self.t0) + c(self.s0) * (x - c(self.x0))
             + ops.sum(c(self.dslope) * ops.relu(x[:, None] - c(self.inner)), axis=1))
        smooth = c(self.line[:, 0]) + c(self.line[:, 1]) * x_smooth
        units_sum = c(self.constant) + ops.sum(ops.relu(t))
        value = self._whole_tensor(ops.stop_gradient(units_sum))
        # value from the whole-network map, gradient from the affine fit of the smoothed twin
        slope = c(self.scale) * (ops.sum(smooth) - ops.stop_gradient(ops.sum(smooth)))
        return value + slope

    def _whole_tensor(self, units_sum):
        """:meth:`whole` on a scalar tensor (no gradient needed: the caller stops it)."""
        c = lambda v: ops.convert_to_tensor(v, "float32")  # noqa: E731
        if self.whole_map is None:
            return c(self.scale) * units_sum + c(self.offset)
        s, w = self.whole_map
        if len(s) == 1:
            return c(w[0] / s[0]) * units_sum
        slopes = np.diff(w) / np.diff(s)
        inner = c(w[0]) + ops.sum(c(np.diff(np.concatenate([[0.0], slopes])))
                                  * ops.relu(units_sum - c(s[:-1])))
        below = c(w[0] / s[0]) * units_sum
        above = c(w[-1] / s[-1]) * units_sum
        return ops.where(units_sum <= s[0], below, ops.where(units_sum >= s[-1], above, inner))

    def floor(self, min_widths=None):
        """Estimated ms with every group at its narrowest (default: one channel, or one run)."""
        if min_widths is None:
            min_widths = [g.granule for g in self.graph.groups]
        return self.count(min_widths)

    def max_reduction(self, min_widths=None):
        """The largest latency cut the gated channels can give, by the estimate (in [0, 1])."""
        if self.total <= 0:
            return 0.0
        return float(min(max(1.0 - self.floor(min_widths) / self.total, 0.0), 1.0))

    def p_for_reduction(self, reduction):
        """The regularizer's p for removing ``reduction`` of the latency: ``p * prunable = (1 - r) total``."""
        if not 0.0 < reduction < 1.0:
            raise ValueError(f"target latency reduction must be in (0, 1), got {reduction}")
        reachable = self.max_reduction()
        if reduction >= reachable:
            raise ValueError(
                f"cannot remove {reduction:.0%} of the latency: with every group at its narrowest the "
                f"estimate is still {1 - reachable:.1%} of the network's, so at most "
                f"{reachable:.1%} can be cut")
        return (1.0 - reduction) * self.total / self.prunable

    def reduction_for_p(self, p):
        """The fraction of the latency removed when L(a) = p * prunable."""
        return 1.0 - p * self.prunable / self.total
