"""The one extraction: select channels on a budget (or take given ones), build the narrow model
without gate leftovers, and check it against its hard-gated twin with one bar.

The pipeline's extract stage, :func:`pn_tf.prune`, the coverage harness and the latency table
all extract through :func:`extract_at`.
"""

import dataclasses

import keras
import numpy as np

from pn_tf.extract.select import Selection, gate_scores, select_channels
from pn_tf.extract.surgery import ExtractionError, extract_model, set_gate_masks
from pn_tf.graph import ChannelGraph, FlopsModel
from pn_tf.graph.replay import replay
from pn_tf.layers import gate_layers, set_gate_mode

# The extracted model equals its hard-gated twin within this fraction of max(1, output scale):
# float32 resolves an output of size s to about s * 6e-8, so the bar is relative to the output
# scale (at least 1), and a barely trained network's logits of thousands are not an error.
EQUIVALENCE_TOLERANCE = 1e-4


@dataclasses.dataclass
class Extraction:
    """The narrow model and how it was chosen and checked.

    Attributes:
        model: the narrow keras.Model (no gates, no mask branches).
        selection: the kept channels (:class:`~pn_tf.extract.Selection`) and their cost.
        graph: the gated model's :class:`~pn_tf.graph.ChannelGraph`.
        flops: the narrow model's MACs, counted on it.
        selected_flops: the MACs the FLOPs model gives the selected widths.
        baseline_flops: the MACs of the unpruned network.
        max_abs_diff, output_scale: the equivalence check on the given images (None: not checked).
    """

    model: keras.Model
    selection: Selection
    graph: ChannelGraph
    flops: float
    selected_flops: float
    baseline_flops: float
    max_abs_diff: float = None
    output_scale: float = None

    @property
    def max_rel_diff(self):
        return None if self.max_abs_diff is None else self.max_abs_diff / max(1.0, self.output_scale)

    @property
    def equivalent(self):
        """The narrow model's MACs are the selection's and (if checked) its outputs the hard-gated
        network's, within :data:`EQUIVALENCE_TOLERANCE` x max(1, output scale)."""
        same_flops = abs(self.flops - self.selected_flops) <= 1e-6 * max(self.selected_flops, 1.0)
        return same_flops and (self.max_abs_diff is None or self.max_rel_diff <= EQUIVALENCE_TOLERANCE)


def extract_at(gated, target_reduction=None, *, keep=None, cost=None, scores=None, round_to=1,
               images=None, strict=True, graph=None, name=None):
    """Extracts ``gated`` at a budget, or at the channels ``keep``.

    Args:
        gated: a gated keras.Model (zoo or :func:`pn_tf.auto.insert_gates`).
        target_reduction: fraction of ``cost`` to remove (None with ``keep``).
        keep: instead of a selection, the kept channels per group (bool arrays).
        cost: the cost model the selection lands on (default: the FLOPs T(a)).
        scores: per-group channel scores (default: the searched gates, :func:`gate_scores`).
        round_to: see :func:`~pn_tf.extract.select_channels`.
        images: inputs on which the narrow model is compared with the hard-gated network
            (the gates are left as they were); None: not compared.
        strict: raise an ExtractionError when the result is not :attr:`Extraction.equivalent`
            (else the caller reads it).
        graph: ``gated``'s ChannelGraph, if already built.
        name: the narrow model's name (default ``<name without _gated>_pruned``).

    Returns:
        An :class:`Extraction`.
    """
    graph = graph or ChannelGraph(gated)
    flops = FlopsModel(graph)
    cost = cost or flops
    if keep is None:
        scores = gate_scores(gated) if scores is None else scores
        selection = select_channels(cost, scores, target_reduction, round_to)
    else:
        keep = [np.asarray(k, dtype=bool) for k in keep]
        selection = Selection(keep, cost.count([int(k.sum()) for k in keep]), cost.total, [])
    name = name or gated.name.removesuffix("_gated") + "_pruned"
    narrow = simplify(extract_model(gated, selection.keep, graph, name=name),
                      {gate.name for gate in gate_layers(gated)})
    result = Extraction(narrow, selection, graph, FlopsModel(narrow).total, flops.count(selection.widths),
                        flops.total)
    if images is not None:
        _compare(gated, result, images)
    if strict and not result.equivalent:
        raise ExtractionError(
            f"extraction check failed: MACs {result.flops} vs {result.selected_flops} selected, max "
            f"abs difference {result.max_abs_diff} at output scale {result.output_scale} (allowed "
            f"{EQUIVALENCE_TOLERANCE} x max(1, scale)); please report this with the model")
    return result


def _compare(gated, result, images):
    gates = gate_layers(gated)
    mode = gates[0].mode if gates else "identity"
    set_gate_masks(gated, result.selection.keep, result.graph)
    set_gate_mode(gated, "mask")
    try:
        reference = np.asarray(gated(images, training=False))
    finally:
        set_gate_mode(gated, mode)
    pruned = np.asarray(result.model(images, training=False))
    result.max_abs_diff = float(np.max(np.abs(reference - pruned)))
    result.output_scale = float(np.max(np.abs(reference)))


def _is_mask_multiply(op):
    """Whether ``op`` is a ``pn_mask_*`` multiply by a concatenation of gated ones."""
    if not isinstance(op, keras.layers.Multiply) or not op.name.startswith("pn_mask_"):
        return False
    mask = op._inbound_nodes[0].input_tensors[1]._keras_history[0]
    return isinstance(mask, keras.layers.Concatenate) and mask.name.startswith("pn_mask_cat_")


def simplify(model, gate_names):
    """``model`` without the Identity layers left by gates and without mask branches.

    After extraction a gate is an Identity and a mask branch multiplies by ones; both are
    dropped (the same layer objects are reused, so weights are kept).
    """
    def leftover(op):
        return (isinstance(op, keras.layers.Identity) and op.name in gate_names) or _is_mask_multiply(op)

    if not any(leftover(layer) for layer in model.layers):
        return model
    return replay(model, lambda op: None if leftover(op) else op)
