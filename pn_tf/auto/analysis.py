"""Which channel spaces of a model to prune: :func:`analyse`, :func:`find_groups`, policies.

The one channel-dependency engine (:class:`pn_tf.graph.ChannelGraph`) finds the
spaces; the policy (``POLICIES`` plus single-rule overrides) decides which of
them are pruned.
"""

import dataclasses

import keras

from pn_tf.auto._util import _quiet, log
from pn_tf.graph import ChannelGraph
from pn_tf.graph.rules import MERGE, rule_for
from pn_tf.layers import ChannelGate, gate_layers

# Policy presets. "all": every space the engine can prune. "internal": only
# block-internal widths (what the zoo declares): not residual streams, not spaces
# read by several convolutions, not heads/SE read at 1x1, not linear bottlenecks.
POLICIES = {
    "all": dict(prune_residual=True, prune_branching=True, prune_heads=True, prune_linear=True),
    "internal": dict(prune_residual=False, prune_branching=False, prune_heads=False,
                     prune_linear=False),
}


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
    """A flat copy of ``model`` with every gate replaced by Identity and every layer holding a gate
    inside (attention with gated heads) by its plain Keras self (same weights)."""

    from pn_tf.extract.surgery import copy_model, ungated_clone

    def clone(layer):
        if isinstance(layer, ChannelGate):
            return keras.layers.Identity(name=layer.name)
        return ungated_clone(layer)

    return copy_model(model, clone)


strip_gates = _strip_gates


def _spatial_is_one(tensor):
    return len(tensor.shape) <= 2 or all(d == 1 for d in tensor.shape[1:-1])


def _is_additive_merge(op):
    rule = rule_for(op)
    return rule.kind == MERGE and getattr(rule, "additive", False)


def _space_traits(graph, space):
    """(residual, consumers that mix channels, read at 1x1/dense, passes a nonlinearity)."""
    root = graph.root(space.atoms[0])
    residual = any(_is_additive_merge(graph.operation(name)) for name in space.carriers)
    consumers, pooled = set(), False
    for name, role, atoms, tensor in graph.reads():
        if role in ("conv", "dense") and any(graph.root(a) == root for a in atoms):
            consumers.add(name)
            inner = tensor is None  # read inside the layer's own call (attention heads)
            pooled = pooled or (not inner and (role == "dense" or _spatial_is_one(tensor)))
    nonlinear = any(rule_for(graph.operation(name)).nonlinear(graph.operation(name))
                    for name in space.carriers + space.producers)
    return residual, consumers, pooled, nonlinear


def analyse(model, policy="all", exclude=(), **overrides):
    """The channel spaces of ``model`` and which of them ``policy`` prunes.

    Args:
        model: a built functional or Sequential keras.Model; nested sub-models are
            analysed through (gates, if any, are ignored: a model from the zoo is
            analysed as if its gates were Identity).
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
        elif space.atoms[0] not in graph.birth and graph.inner_owner(space.atoms[0]) is None:
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
