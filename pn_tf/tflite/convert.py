"""TFLite conversion: a SavedModel's ``serving_default`` -> ``.tflite`` bytes, as pn-tf converts.

Quantization (``quantization=...``):

* ``"float32"`` -- no optimisation; matches Keras to float round-off.
* ``"float16"`` -- float16 weights, float32 compute on CPU (weights dequantised at load).
* ``"int8"``    -- full-integer: every op runs int8 (``TFLITE_BUILTINS_INT8`` only, so an op
  without an int8 kernel fails the conversion instead of silently falling back to float),
  activations calibrated on representative batches of *training* images
  (:func:`pn_tf.tflite.calibration.representative_dataset`). **I/O stays float32 by default**
  (``int8_io="float32"``): the converter adds one QUANTIZE after the input and one DEQUANTIZE
  before the output, so the file is a drop-in replacement for the float one.
  ``int8_io="int8"`` / ``"uint8"`` makes the I/O tensors integer instead (for accelerators
  that want it); :func:`pn_tf.tflite.runtime.run_interpreter` handles either by reading each
  tensor's ``quantization`` (scale, zero point).

  With ``repair_calibration=True`` (the default) the calibration ranges widened by in-place
  ops, and the empty ranges of tensors zero on every batch (which XNNPACK refuses), are
  repaired before the converter quantizes (:mod:`pn_tf.tflite.calibration`); the number of
  repaired tensors is logged.

Why from a SavedModel: with Keras 3 on TF 2.21, ``from_concrete_functions`` on a traced
``model.__call__`` silently drops the captured weights (the result is NaN), while
``TFLiteConverter.from_saved_model`` freezes them correctly (it is also what
``from_keras_model`` does internally). :func:`pn_tf.export.export_tflite` writes the SavedModel.
"""

from __future__ import annotations

import logging
import os
import re

from pn_tf.tflite.calibration import calibration_batches, repaired_calibration

log = logging.getLogger(__name__)

QUANTIZATIONS = ("float32", "float16", "int8")
INT8_IO_TYPES = ("float32", "int8", "uint8")


def check_quantization(quantization, representative_data, int8_io):
    """Raises ValueError for an unknown or inconsistent quantization / ``int8_io`` setting."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if int8_io not in INT8_IO_TYPES:
        raise ValueError(f"int8_io must be one of {INT8_IO_TYPES}, got {int8_io!r}")
    if quantization == "int8" and representative_data is None:
        raise ValueError("quantization='int8' needs representative_data (batches of training "
                         "images), e.g. pn_tf.tflite.calibration.representative_dataset('cifar10')")
    if quantization != "int8" and int8_io != "float32":
        raise ValueError(f"int8_io={int8_io!r} only applies to quantization='int8'")


def make_converter(saved_model_dir, quantization="float32", representative_data=None,
                   int8_io="float32", max_calibration_batches=None):
    """A ``TFLiteConverter`` for the SavedModel's ``serving_default``, set up as pn-tf exports.

    See :func:`pn_tf.export.export_tflite` for the arguments. Converting it yields the
    converter's own int8 ranges; wrap the conversion in
    :func:`pn_tf.tflite.calibration.repaired_calibration` for pn-tf's repaired ones.
    """
    import tensorflow as tf

    check_quantization(quantization, representative_data, int8_io)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        os.fspath(saved_model_dir), signature_keys=["serving_default"])
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration_batches(representative_data,
                                                               max_calibration_batches)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = getattr(tf, int8_io)
        converter.inference_output_type = getattr(tf, int8_io)
    return converter


def convert_saved_model(saved_model_dir, quantization="float32", representative_data=None,
                        int8_io="float32", max_calibration_batches=None, repair_calibration=True,
                        repairs=None):
    """Converts a SavedModel's ``serving_default`` signature to TFLite flatbuffer bytes.

    ``repairs``: a list or None; for ``"int8"`` with the repair on, each repaired tensor's
    ``(name, recorded (min, max), true (min, max))`` is appended to it.
    """
    converter = make_converter(saved_model_dir, quantization, representative_data, int8_io,
                               max_calibration_batches)
    if quantization != "int8" or not repair_calibration:
        return converter.convert()
    repaired = []
    with repaired_calibration(repaired):
        content = converter.convert()
    if repaired:
        log.info("int8 calibration: repaired the ranges of %d tensors (widened in place, "
                 "tensorflow/tensorflow#127842, or empty: zero on every calibration batch), e.g. %s",
                 len(repaired), repaired[0][0])
    if repairs is not None:
        repairs.extend(repaired)
    return content


def error_line(err):
    """An exception as one short line. A converter error spans many lines; its useful part is
    the op it rejects ("'tf.MaxPool3D' op is neither a custom op nor a flex op"), else the first
    line that says "error:"."""
    text = str(err)
    rejected = re.search(r"'tf\.\w+' op [^\n]*", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower()]
    text = rejected.group(0) if rejected else (errors or lines or [""])[0]
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
