"""TFLite files: conversion, int8 calibration, the LiteRT runtime, graph inspection, timing.

One job per module:

* :mod:`pn_tf.tflite.convert`     -- SavedModel -> TFLite bytes (float32 / float16 / int8).
* :mod:`pn_tf.tflite.calibration` -- int8 calibration data and the calibration-range repair.
* :mod:`pn_tf.tflite.runtime`     -- a LiteRT interpreter: load, (de)quantize I/O, predict.
* :mod:`pn_tf.tflite.inspection`  -- what a ``.tflite`` graph is: MACs, XNNPACK delegation.
* :mod:`pn_tf.tflite.timing`      -- batch-1 latency, timed interleaved, with the CPU share.

Writing a Keras model to ``.keras`` / SavedModel / ``.tflite`` files with verification is
:mod:`pn_tf.export`, built on these. TensorFlow is imported lazily everywhere here, so the
runtime, inspection and timing modules (the deployment tools use them) start in a fraction
of a second and need only ``ai-edge-litert`` and numpy.
"""
