"""Private helpers shared by the ``pn_tf.auto`` modules."""

import contextlib
import logging

# One logger for the whole package (records keep the name "pn_tf.auto").
log = logging.getLogger("pn_tf.auto")


def _layer_of(tensor):
    return tensor._keras_history[0]


@contextlib.contextmanager
def _quiet():
    """Silences the engine's per-analysis warnings (they were reported once already)."""
    logger = logging.getLogger("pn_tf.graph.channels")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
