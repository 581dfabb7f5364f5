"""A network as *units*: what TFLite runs as one operation, cut out and converted on its own.

A unit is one layer call, plus the BatchNormalization / activation / ReLU / Identity calls that
follow a conv, depthwise conv, dense layer or addition and read only its output (what the TFLite
converter fuses into one op); a ZeroPadding2D goes with the convolution it feeds (XNNPACK folds
a zero PAD into it): each layer type's channel rule declares which of these it is
(:class:`pn_tf.graph.rules.TFLite`). Every unit becomes a small Keras model on fresh batch-1 inputs with the
same layer objects and weights (:func:`unit_model`), which :func:`convert` turns into a
``.tflite`` file for timing. tools/profile_layers.py and the latency tables
(:mod:`pn_tf.latency.table`) are built on this.
"""

import collections

import numpy as np

DTYPES = ("float32", "int8")


def split_units(model):
    """The model's layer calls grouped into units (lists of nodes), in topological order.

    What fuses with what is each layer type's :class:`~pn_tf.graph.rules.TFLite` declaration
    in its channel rule (:func:`pn_tf.graph.rules.tflite_for`).
    """
    import keras

    from pn_tf.graph.rules import tflite_for

    nodes = [node for depth in sorted(model._nodes_by_depth, reverse=True)
             for node in model._nodes_by_depth[depth]
             if not node.is_input and not isinstance(node.operation, keras.layers.InputLayer)]
    consumers = collections.Counter(id(t) for node in nodes for t in node.input_tensors)
    for tensor in keras.tree.flatten(model.outputs):
        consumers[id(tensor)] += 1
    units, open_ends = [], {}  # id(last output of a fusable unit) -> unit
    for node in nodes:
        tflite = tflite_for(node.operation)
        inputs = node.input_tensors
        unit = open_ends.get(id(inputs[0])) if len(inputs) == 1 else None
        after_pad = unit is not None and len(unit) == 1 and tflite_for(unit[0].operation).pad
        if (unit is not None and consumers[id(inputs[0])] == 1
                and (tflite.absorbs_pad if after_pad else tflite.fuses_into_previous)):
            unit = open_ends.pop(id(inputs[0]))
            unit.append(node)
            open_ends[id(node.output_tensors[0])] = unit
            continue
        unit = [node]
        units.append(unit)
        if (tflite.fusion_target or tflite.pad) and len(node.output_tensors) == 1:
            open_ends[id(node.output_tensors[0])] = unit
    return units


def unit_names(unit):
    """The names of a unit's layer calls (the same in every extraction of one gated network)."""
    return tuple(node.operation.name for node in unit)


def head(unit):
    """The unit's main operation (the convolution after a padding, else its first call)."""
    from pn_tf.graph.rules import tflite_for

    padded = len(unit) > 1 and tflite_for(unit[0].operation).pad
    return (unit[1] if padded else unit[0]).operation


def unit_model(unit, batch=1):
    """A keras.Model running the unit's calls on fresh inputs of one example (``batch`` rows: the
    windows of one image where a call folds them into the batch axis,
    :func:`pn_tf.graph.replay.batch_rows`), same layers and weights."""
    import keras

    first = unit[0]
    inputs, values = [], {}
    for tensor in first.input_tensors:
        if id(tensor) not in values:
            first_size = batch if tensor.shape[0] is None else tensor.shape[0]  # (q, k, v) stacked: 3
            values[id(tensor)] = keras.Input(batch_shape=(first_size,) + tuple(tensor.shape[1:]))
            inputs.append(values[id(tensor)])
    for node in unit:
        args, kwargs = node.arguments.fill_in(values)
        outputs = keras.tree.flatten(node.operation(*args, **kwargs))
        for tensor, value in zip(node.output_tensors, outputs):
            values[id(tensor)] = value
    outputs = [values[id(t)] for t in unit[-1].output_tensors]
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0])


def layer_signature(layer):
    """A layer's type and config, without what does not change its computation (name, trainable)."""
    config = dict(layer.get_config()) if hasattr(layer, "get_config") else {}
    for key in ("name", "trainable"):
        config.pop(key, None)
    return type(layer).__name__ + repr(sorted(config.items(), key=lambda kv: kv[0]))


def batch1_model(model):
    """``model`` called on a fixed batch-1 input: what is converted to time a whole network."""
    import keras

    x = keras.Input(shape=model.input_shape[1:], batch_size=1)
    return keras.Model(x, model(x))


def signature(unit, batch=1):
    """What decides a unit's latency: its calls' types and configs (names aside) and input shapes
    (``batch``: rows per example, see :func:`unit_model`).

    Units of equal signature are the same computation on different weights, timed once.
    """
    parts = [layer_signature(node.operation) for node in unit]
    shapes = tuple(tuple(t.shape[1:]) for t in unit[0].input_tensors)
    return repr((tuple(parts), shapes) + ((batch,) if batch != 1 else ()))


def convert(model, path, dtype="float32", seed=0, io="int8", samples=None):
    """``.tflite`` of any fixed-shape Keras model (several inputs, any rank), float32 or int8.

    int8 models are calibrated on random normal inputs and take and give int8 tensors with
    ``io="int8"`` (a unit: inside a whole int8 network its neighbours are int8 too, so no
    quantize op is timed), float32 ones with ``io="float32"`` (a whole network, as the pipeline
    exports it: its quantize and dequantize ops are part of its time); ``samples`` (inputs of
    a one-input model, e.g. real images) calibrate instead of random inputs, so that the
    quantization, and with it which ops XNNPACK takes, is the exported file's; a tensor
    zero on every calibration input (a narrow ReLU output on random weights) gets a small range
    instead of an empty one, which XNNPACK refuses (:func:`pn_tf.tflite.calibration.widen_empty_ranges`).
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from pn_tf.io import save_bytes

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    specs = [tf.TensorSpec(t.shape, tf.float32) for t in model.inputs]
    function = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
    # Weights as constants, as in a SavedModel conversion: XNNPACK only takes convolutions
    # with static filters (with variables every CONV_2D would run in TFLite's own kernels).
    frozen = convert_variables_to_constants_v2(function.get_concrete_function(*specs))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if dtype == "int8":
        rng = np.random.default_rng(seed)

        def calibration():
            if samples is not None:
                for sample in np.asarray(samples, np.float32)[:16]:
                    yield [sample[None]]
                return
            for _ in range(8):
                yield [rng.standard_normal(s.shape).astype(np.float32) for s in specs]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.int8 if io == "int8" else tf.float32
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    from pn_tf.tflite.calibration import repaired_calibration

    with repaired_calibration([], true_ranges=False):
        return save_bytes(path, converter.convert())


def timing_interpreter(path, num_threads, rng):
    """A LiteRT interpreter for ``path`` with random inputs set (float or int8)."""
    from pn_tf.tflite.runtime import load_interpreter

    interpreter = load_interpreter(path, num_threads)
    for detail in interpreter.get_input_details():
        values = rng.standard_normal(detail["shape"])
        if detail["dtype"] == np.int8:
            values = np.clip(np.round(values * 40), -128, 127)
        interpreter.set_tensor(detail["index"], values.astype(detail["dtype"]))
    return interpreter


def overhead_model():
    """A one-op model: its invoke() time is the interpreter's own cost per call."""
    import keras

    x = keras.Input(shape=(8,), batch_size=1)
    return keras.Model(x, keras.layers.ReLU()(x))
