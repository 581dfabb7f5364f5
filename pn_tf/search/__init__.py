"""The search stage: predictor, episodic memory, the PN train_step and its runner (METHOD.md 4-9)."""

from pn_tf.search.memory import EpisodicMemory
from pn_tf.search.predictor import (
    PREDICTOR_KINDS,
    BiGRUPredictor,
    GRUPredictor,
    LinearPredictor,
    WeightNormDense,
    build_predictor,
)
from pn_tf.search.run import SearchConfig, run_search
from pn_tf.search.search_model import PNSearch, project

__all__ = [
    "BiGRUPredictor",
    "EpisodicMemory",
    "GRUPredictor",
    "LinearPredictor",
    "PNSearch",
    "SearchConfig",
    "PREDICTOR_KINDS",
    "WeightNormDense",
    "build_predictor",
    "project",
    "run_search",
]
