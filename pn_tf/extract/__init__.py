"""Extraction: choose kept channels on a FLOPs budget and build the narrower model."""

from pn_tf.extract.select import Selection, filter_l1_scores, gate_scores, select_channels
from pn_tf.extract.surgery import ExtractionError, extract_model, set_gate_masks

__all__ = ["ExtractionError", "Selection", "extract_model", "filter_l1_scores", "gate_scores",
           "select_channels", "set_gate_masks"]
