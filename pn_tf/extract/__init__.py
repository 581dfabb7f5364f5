"""Extraction: choose kept channels on a budget and build the narrower model.

* ``select``     -- channel scores and the selection at a budget (:func:`select_channels`).
* ``surgery``    -- the narrow model for given kept channels (:func:`extract_model`).
* ``extraction`` -- :func:`extract_at`, the one extraction every caller uses: selection,
  surgery, gate leftovers removed, checked against the hard-gated twin with one bar.
"""

from pn_tf.extract.select import (SELECTIONS, Selection, channel_scores, filter_l1_scores, gate_scores,
                                  random_scores, select_channels, tile_multiples,
                                  uniform_scores)
from pn_tf.extract.surgery import ExtractionError, extract_model, set_gate_masks
from pn_tf.extract.extraction import EQUIVALENCE_TOLERANCE, Extraction, extract_at, simplify

__all__ = ["EQUIVALENCE_TOLERANCE", "Extraction", "ExtractionError", "SELECTIONS", "extract_at", "simplify", "Selection", "channel_scores", "extract_model",
           "filter_l1_scores", "gate_scores", "random_scores", "select_channels", "set_gate_masks",
           "tile_multiples", "uniform_scores"]
