"""Choosing the channels to keep, deterministically, on a FLOPs or latency budget.

The reference code takes one noisy Gumbel sample as the final architecture and lands
wherever it lands (METHOD.md, "known weaknesses"). Here every channel gets a score
(by default its gate logit theta: ``sigmoid((theta + base) / T) >= 0.5`` is the
noise-free hard gate), and one global threshold on the scores is searched so that
the network's exact MAC count T(a) (or its latency estimate L(a), :mod:`pn_tf.latency`) lands
on the requested budget. Each group keeps
its top-scoring channels; ``round_to`` rounds each group's kept count to a multiple
(e.g. 8) for hardware-friendly shapes; no group ever drops below one channel.
"""

import dataclasses
import logging
import math

import numpy as np

from pn_tf.graph import FlopsModel
from pn_tf.graph.rules import rule_for
from pn_tf.settings import SELECTIONS

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Selection:
    """Kept channels per group and the cost of the result.

    Attributes:
        keep: list of bool arrays, one per group (True = kept channel).
        cost: the cost model's value at these widths (exact MACs for a FlopsModel, estimated
            ms for a LatencyModel).
        total_cost: its value for the unpruned network.
        notes: messages about adjustments (e.g. a group that would have been empty).
    """

    keep: list
    cost: float
    total_cost: float
    notes: list

    @property
    def widths(self):
        return [int(k.sum()) for k in self.keep]

    @property
    def reduction(self):
        return 1.0 - self.cost / self.total_cost


def gate_scores(model):
    """Per-group scores: the gate logits of ``model``, in group order."""
    from pn_tf.layers import gate_layers

    return [np.asarray(g.logits.numpy(), dtype=np.float64) for g in gate_layers(model)]


def filter_l1_scores(model, graph):
    """Per group: z-scored L1 norms of the producing filters (summed over tied producers).

    The classic magnitude criterion (Li et al., ICLR 2017), standardised within each group so
    that one global threshold compares groups of different scales.
    """
    scores = []
    for group in graph.groups:
        total = np.zeros(group.size)
        for name in group.producers:
            op = graph.operation(name)
            l1 = rule_for(op).filter_norms(op)
            if l1 is not None and l1.shape == (group.size,):
                total += l1
        std = total.std()
        scores.append((total - total.mean()) / std if std > 0 else np.zeros(group.size))
    return scores


def uniform_scores(model, graph):
    """Scores under which one global threshold keeps the same fraction of every group.

    Uniform width scaling: within each group the channels are ranked by filter L1 norm and
    channel ``r`` (0 = largest norm) of a group of ``n`` scores ``1 - r / n``, so a
    threshold ``t`` keeps about ``(1 - t) n`` channels of every group.
    """
    scores = []
    for z in filter_l1_scores(model, graph):
        ranks = np.empty(len(z))
        ranks[np.argsort(-z, kind="stable")] = np.arange(len(z))
        scores.append(1.0 - ranks / len(z))
    return scores


def random_scores(graph, seed=0):
    """Independent uniform scores: random channels (and near-uniform widths) per group."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(size=group.size) for group in graph.groups]




def channel_scores(method, model, graph, seed=0):
    """Per-group channel scores for a selection method from :data:`pn_tf.settings.SELECTIONS`.

    ``gates`` reads the (searched) gate logits; ``l1`` ranks filters by L1 norm globally
    (z-scored per group); ``uniform`` keeps the same fraction of every group (its best
    filters by L1 norm); ``random`` draws channels at random with ``seed``.
    """
    if method == "gates":
        return gate_scores(model)
    if method == "l1":
        return filter_l1_scores(model, graph)
    if method == "uniform":
        return uniform_scores(model, graph)
    if method == "random":
        return random_scores(graph, seed)
    raise ValueError(f"unknown selection {method!r}; choose from {', '.join(SELECTIONS)}")


def _round_count(count, size, round_to):
    if round_to <= 1:
        return max(1, count)
    rounded = int(round(count / round_to)) * round_to
    return int(min(size, max(min(round_to, size), rounded)))


def _keep_top(scores, count):
    keep = np.zeros(len(scores), dtype=bool)
    keep[np.argsort(-scores, kind="stable")[:count]] = True
    return keep


def tile_multiples(sizes, largest=32):
    """Per group: the largest power of two <= ``largest`` that is at most half the group.

    Rounding to these keeps every group prunable (it can at least halve) while its widths stay
    multiples of the channel tiles of CPU kernels (XNNPACK's float32 kernels on AVX-512 work on
    16-32 channels; see docs/latency.md): 16 channels -> 8, 32 -> 16, 64 and more -> 32.
    """
    out = []
    for size in sizes:
        multiple = 1
        while multiple * 2 <= min(largest, size / 2):
            multiple *= 2
        out.append(multiple)
    return out


def _multiples(round_to, sizes):
    """``round_to`` (an int, one int per group, or ``"tile"``) as one multiple per group."""
    if isinstance(round_to, str):
        if round_to != "tile":
            raise ValueError(f"round_to must be an int, a list of ints or 'tile', got {round_to!r}")
        return tile_multiples(sizes)
    if np.ndim(round_to) == 0:
        multiples = [int(round_to)] * len(sizes)
    else:
        multiples = [int(r) for r in round_to]
        if len(multiples) != len(sizes):
            raise ValueError(f"round_to has {len(multiples)} entries, the network {len(sizes)} groups")
    if min(multiples, default=1) < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    return multiples


def round_widths(widths, sizes, round_to=1):
    """``widths`` rounded as extraction rounds kept counts under ``round_to`` (see select_channels)."""
    sizes = [int(n) for n in sizes]
    return [_round_count(int(w), size, multiple)
            for w, size, multiple in zip(widths, sizes, _multiples(round_to, sizes))]


def min_widths(sizes, round_to=1):
    """The narrowest width each group can be given under ``round_to`` (see select_channels)."""
    return [_round_count(0, int(size), multiple)
            for size, multiple in zip(sizes, _multiples(round_to, [int(n) for n in sizes]))]


def _at_threshold(scores, threshold, multiples):
    keep, notes = [], []
    for index, (s, multiple) in enumerate(zip(scores, multiples)):
        count = int((s >= threshold).sum())
        if count == 0:
            notes.append(f"group {index} would lose all {len(s)} channels; keeping its best one")
        keep.append(_keep_top(s, _round_count(count, len(s), multiple)))
    return keep, notes


def select_channels(cost_model, scores, target_reduction=None, round_to=1):
    """Kept channels per group so that the network lands on a FLOPs (or latency) budget.

    Args:
        cost_model: a :class:`FlopsModel` (or a model/graph to build one from) or a
            :class:`pn_tf.latency.LatencyModel`.
        scores: list of 1-D arrays, one per group (higher = more worth keeping),
            e.g. :func:`gate_scores`.
        target_reduction: float in (0, 1) or None. Fraction of the unpruned MACs
            (or of the estimated latency) to remove. None keeps exactly the channels with a positive score
            (the noise-free hard gates when the scores are ``theta + base``).
        round_to: int, a list of ints (one per group) or ``"tile"``
            (:func:`tile_multiples`). Round each group's kept count to a multiple of it.

    Returns:
        A :class:`Selection`.
    """
    if not hasattr(cost_model, "count"):
        cost_model = FlopsModel(cost_model)
    scores = [np.asarray(s, dtype=np.float64) for s in scores]
    sizes = [int(w) for w in cost_model.widths]
    if [len(s) for s in scores] != sizes:
        raise ValueError(f"scores have widths {[len(s) for s in scores]}, the groups {sizes}")
    if not sizes and target_reduction is not None:
        raise ValueError("the model has no prunable channel groups: there is nothing to remove")
    granules = [g.granule for g in cost_model.graph.groups]
    scores = [_granule_scores(s, n) for s, n in zip(scores, granules)]
    round_to = [math.lcm(m, n) for m, n in zip(_multiples(round_to, sizes), granules)]

    def cost(keep):
        return cost_model.count([k.sum() for k in keep])

    if target_reduction is None:
        keep, notes = _at_threshold(scores, 0.0, round_to)
    else:
        if not 0.0 < target_reduction < 1.0:
            raise ValueError(f"target_reduction must be in (0, 1), got {target_reduction}")
        budget = (1.0 - target_reduction) * cost_model.total
        floor = cost_model.count(min_widths(sizes, round_to))
        if floor > budget:
            raise ValueError(
                f"cannot remove {target_reduction:.1%} of {cost_model.name}: keeping the minimum of "
                f"every group still costs {floor / cost_model.total:.1%} of the network"
            )
        # Highest threshold first removes most; find the lowest threshold within budget.
        candidates = np.unique(np.concatenate(scores))[::-1]
        lo, hi = 0, len(candidates) - 1  # candidates[lo] keeps fewest
        if cost(_at_threshold(scores, candidates[hi], round_to)[0]) <= budget:
            lo = hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cost(_at_threshold(scores, candidates[mid], round_to)[0]) <= budget:
                lo = mid
            else:
                hi = mid
        keep, notes = _at_threshold(scores, candidates[lo], round_to)
        keep = _fill_budget(keep, scores, cost, budget, round_to)
        keep = _close_gap(keep, scores, cost, budget, round_to, slack=CLOSE_GAP * cost_model.total)
    for note in notes:
        log.warning(note)
    return Selection(keep, cost(keep), cost_model.total, notes)


def _granule_scores(scores, granule):
    """Each channel scored by the mean of its aligned run of ``granule`` channels.

    Where channels can only go in runs (a GroupNormalization group), a run is kept or
    removed whole: equal scores within a run and counts in multiples of the run keep it
    together.
    """
    if granule <= 1:
        return scores
    return np.repeat(scores.reshape(-1, granule).mean(axis=1), granule)


# A selection whose FLOPs stay further than this share of the total below the budget (every
# single channel costs more than the gap: a small model of few, wide layers) is moved closer.
CLOSE_GAP = 0.005


def _close_gap(keep, scores, cost, budget, multiples, slack):
    """Trades one step of one group for one step of another while that lands closer to budget.

    Among the trades that stay within budget and cost more than now, the one that comes
    closest is taken (ties: the larger score gain), until the gap is below ``slack`` or no
    trade helps. Only coarse models ever need it; others end the greedy fill within slack.
    """
    keep = [k.copy() for k in keep]
    current = cost(keep)
    while budget - current > slack:
        best = None
        for add in range(len(keep)):
            step = min(multiples[add], int((~keep[add]).sum()))
            if step == 0:
                continue
            grown = _keep_top(scores[add], int(keep[add].sum()) + step)
            for drop in range(len(keep)):
                fewer = int(keep[drop].sum()) - multiples[drop]
                if drop == add or fewer < multiples[drop]:
                    continue
                candidate = list(keep)
                candidate[add], candidate[drop] = grown, _keep_top(scores[drop], fewer)
                value = cost(candidate)
                if current < value <= budget:
                    gain = (np.sort(scores[add][~keep[add]])[::-1][:step].mean()
                            - np.sort(scores[drop][keep[drop]])[:multiples[drop]].mean())
                    if best is None or (value, gain) > best[:2]:
                        best = (value, gain, candidate)
        if best is None:
            break
        current, keep = best[0], best[2]
    return keep


def _fill_budget(keep, scores, cost, budget, multiples):
    """Greedily adds the best remaining channels (in steps of each group's multiple) in budget."""
    keep = [k.copy() for k in keep]
    while True:
        best = None
        for g, (k, s) in enumerate(zip(keep, scores)):
            step = min(multiples[g], int((~k).sum()))
            if step == 0:
                continue
            candidate = [c if i != g else _keep_top(s, int(k.sum()) + step) for i, c in enumerate(keep)]
            if cost(candidate) <= budget:
                gain = np.sort(s[~k])[::-1][:step].mean()
                if best is None or gain > best[0]:
                    best = (gain, g, candidate)
        if best is None:
            return keep
        keep = best[2]
