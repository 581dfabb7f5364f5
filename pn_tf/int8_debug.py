"""Where an int8 TFLite model loses accuracy: per-op errors and partly-float conversions.

Built on TFLite's ``tf.lite.experimental.QuantizationDebugger`` with pn-tf's converter
settings and calibration repair (:mod:`pn_tf.tflite.convert`,
:mod:`pn_tf.tflite.calibration`):

* :func:`layer_errors` -- every quantized op's output error, in units of its int8 step
  (root-mean-square error / scale; rounding alone gives 1 / sqrt(12) = 0.29), worst first.
  The debugger runs each quantized op beside its float twin on the same inputs, so the figure
  is the op's own error, not what it inherits from earlier ops.
* :func:`convert_partly_float` -- the int8 model with the ops whose output tensor name matches
  a pattern left in float (TFLite's "selective quantization"): to learn whether a few ops
  explain a loss and what keeping them float costs in size and speed.
* :func:`convert_weights_only` -- int8 weights, float activations (dynamic-range
  quantization): the part of a loss that is due to the weights alone.

``tools/int8_check.py`` prints these beside the plain int8 accuracy.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re

from pn_tf.tflite import calibration, convert

#: The error of rounding alone, in units of the int8 step: uniform error over one step.
ROUNDING_ERROR = 12 ** -0.5


def _debugger(saved_model_dir, representative_data, debug_data=None, float_nodes=(),
              repair_calibration=True):
    """A QuantizationDebugger calibrated like ``export_tflite(..., "int8")`` (float I/O)."""
    import tensorflow as tf

    converter = convert.make_converter(saved_model_dir, "int8", representative_data)
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(float_nodes) or None)
    debug = calibration.calibration_batches(
        debug_data if debug_data is not None else representative_data)
    repair = (calibration.repaired_calibration([]) if repair_calibration
              else contextlib.nullcontext())
    with repair:  # the debugger calibrates when it is made
        return tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=debug, debug_options=options)


def layer_errors(saved_model_dir, representative_data, debug_data=None,
                 repair_calibration=True):
    """Per-op int8 errors of a SavedModel, worst first.

    Args:
        saved_model_dir: a SavedModel written by :func:`pn_tf.export.export_saved_model`.
        representative_data: calibration batches, as for ``export_tflite(..., "int8")``.
        debug_data: batches the errors are measured on (default: the calibration batches).
        repair_calibration: calibrate with pn-tf's range repair (the export default).

    Returns a list of ``{"tensor", "op", "error", "scale", "mse"}`` dicts, ``error`` being
    sqrt(mse) / scale (see the module docstring), sorted by it, largest first.
    """
    debugger = _debugger(saved_model_dir, representative_data, debug_data,
                         repair_calibration=repair_calibration)
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    buffer.seek(0)
    rows = []
    for row in csv.DictReader(buffer):
        scale, mse = float(row["scale"]), float(row["mean_squared_error"])
        rows.append({"tensor": row["tensor_name"], "op": row["op_name"],
                     "error": mse ** 0.5 / scale if scale > 0 else 0.0,
                     "scale": scale, "mse": mse})
    return sorted(rows, key=lambda row: -row["error"])


def op_output_names(saved_model_dir, float_tflite=None):
    """The output tensor name of every op of the model's float32 TFLite graph, in order.

    ``float_tflite``: that graph's ``.tflite`` file when already converted (else converted here).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    if float_tflite:
        with open(float_tflite, "rb") as f:
            content = f.read()
    else:
        content = convert.convert_saved_model(saved_model_dir, "float32")
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    graph = model.subgraphs[0]
    names = []
    for operator in graph.operators:
        for index in operator.outputs:
            name = graph.tensors[index].name
            names.append(name.decode() if isinstance(name, bytes) else str(name))
    return names


def matching_nodes(saved_model_dir, patterns, float_tflite=None):
    """The op output names that match any of the regular expressions ``patterns``."""
    try:
        compiled = [re.compile(pattern) for pattern in patterns]
    except re.error as err:
        raise ValueError(f"not a regular expression: {err.pattern!r} ({err})") from None
    return [name for name in op_output_names(saved_model_dir, float_tflite)
            if any(pattern.search(name) for pattern in compiled)]


def float_nodes(saved_model_dir, float_patterns, float_tflite=None):
    """:func:`matching_nodes`, raising ``ValueError`` when no op matches, so a mistyped pattern
    does not pass for a result (callers check their patterns with it before converting)."""
    nodes = matching_nodes(saved_model_dir, float_patterns, float_tflite)
    if not nodes:
        raise ValueError(f"no op output name matches {list(float_patterns)}; see the names "
                         "int8_check.py --layer_errors prints")
    return nodes


def convert_partly_float(saved_model_dir, representative_data, float_patterns,
                         repair_calibration=True, float_tflite=None):
    """int8 TFLite bytes with the ops matching ``float_patterns`` (regexes) left in float.

    Returns ``(content, nodes)``, ``nodes`` being the op output names kept in float. Raises
    ``ValueError`` when no op matches, so a mistyped pattern does not pass for a result.
    ``float_tflite``: the model's float32 ``.tflite``, if already converted (names the ops).
    """
    nodes = float_nodes(saved_model_dir, float_patterns, float_tflite)
    debugger = _debugger(saved_model_dir, representative_data, float_nodes=nodes,
                         repair_calibration=repair_calibration)
    return debugger.get_nondebug_quantized_model(), nodes


def convert_weights_only(saved_model_dir):
    """TFLite bytes with int8 weights and float activations (dynamic-range quantization)."""
    import tensorflow as tf

    converter = convert.make_converter(saved_model_dir, "float32")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()
