"""Extraction: choose kept channels on a FLOPs budget and build the narrower model."""

from pn_tf.extract.select import (SELECTIONS, Selection, channel_scores, filter_l1_scores, gate_scores,
                                  random_scores, select_channels, tile_multiples,
                                  uniform_scores)
from pn_tf.extract.surgery import ExtractionError, extract_model, set_gate_masks

__all__ = ["ExtractionError", "SELECTIONS", "Selection", "channel_scores", "extract_model",
           "filter_l1_scores", "gate_scores", "random_scores", "select_channels", "set_gate_masks",
           "tile_multiples", "uniform_scores"]
