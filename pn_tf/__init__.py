"""pn-tf: structured channel pruning via performance maximization (PN, CVPR 2021).

The package reads in pipeline order:

* ``pn_tf.settings``     -- every setting declared once (name, default, choices, limits).
* ``pn_tf.pipeline``     -- the command (``python -m pn_tf.train`` / ``pn-tf``): the run's
  flags, runner, one module per stage, one class per budget kind.
* ``pn_tf.data_sources`` -- a run's images: TFDS (``pn_tf.data``) or a folder (``pn_tf.image_folder``).
* ``pn_tf.models``       -- the architecture zoo (specs + builders) with gate layers.
* ``pn_tf.layers``       -- the gate layer and small channel ops the zoo needs.
* ``pn_tf.graph``        -- the channel-dependency engine: one rule per layer type, FLOPs T(a).
* ``pn_tf.search``       -- PN: the search model and the one search driver.
* ``pn_tf.extract``      -- channel selection at a budget and the narrow model (``extract_at``).
* ``pn_tf.auto``         -- gates on any model; ``pn_tf.prune(model, data, ...)``.
* ``pn_tf.training``, ``pn_tf.export`` -- fine-tuning recipes; .keras/SavedModel/TFLite files.
* ``pn_tf.tflite``       -- TFLite files: conversion, int8 calibration, the LiteRT runtime,
  graph inspection (MACs, XNNPACK delegation), batch-1 latency timing.
* ``pn_tf.latency``      -- latency tables and the estimate L(a) for latency budgets.
* ``pn_tf.coverage``     -- the coverage harness: models as users write them, one check each.
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX512/AMX-class
# features; elsewhere (e.g. an AVX2-only AMD EPYC) they still make a ResNet-56 training step
# ~1.9x faster (docs/results.md, "Training step speed"). Read when TensorFlow is first
# imported, so it applies where pn_tf is imported first; TF_ENABLE_ONEDNN_OPTS=0 opts out.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

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
