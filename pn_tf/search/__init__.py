"""The search stage: performance predictor, episodic memory (METHOD.md items 5-9)."""

from pn_tf.search.memory import EpisodicMemory
from pn_tf.search.predictor import (
    PREDICTOR_KINDS,
    BiGRUPredictor,
    GRUPredictor,
    LinearPredictor,
    WeightNormDense,
    build_predictor,
)

__all__ = [
    "BiGRUPredictor",
    "EpisodicMemory",
    "GRUPredictor",
    "LinearPredictor",
    "PREDICTOR_KINDS",
    "WeightNormDense",
    "build_predictor",
]
