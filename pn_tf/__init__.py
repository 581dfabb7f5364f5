"""pn-tf: structured channel pruning via performance maximization (PN, CVPR 2021).

The package reads in pipeline order:

* ``pn_tf.data``    -- tf.data input pipelines over TFDS (offline by default).
* ``pn_tf.models``  -- the architecture zoo (specs + builders) with gate layers.
* ``pn_tf.layers``  -- the gate layer and small channel ops the zoo needs.
* ``pn_tf.graph``   -- the channel-dependency engine: groups, FLOPs T(a).
* ``pn_tf.auto``    -- prune any functional model: ``pn_tf.prune(model, dataset, ...)``.
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

# Lazy public API: ``pn_tf.prune(model, dataset, ...)`` without importing TensorFlow here.
_LAZY = {"prune": "pn_tf.auto", "find_groups": "pn_tf.auto", "insert_gates": "pn_tf.auto"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pn_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
