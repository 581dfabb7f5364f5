"""Export stage: ``.keras``, SavedModel and TFLite (float32 / float16 / int8) artifacts.

Every model of the zoo normalises inside, so every artifact takes raw float32 pixels
``[B, H, W, 3]`` in 0..255 and returns logits ``[B, num_classes]``; nothing beside the file is
needed to run it.

Conversion path. TFLite conversion always goes Keras -> SavedModel (an explicit ``serve``
signature, also exposed as ``serving_default``, for ``[None, H, W, 3]`` float32) ->
``tf.lite.TFLiteConverter.from_saved_model``. With Keras 3 on TF 2.21,
``from_concrete_functions`` on a traced ``model.__call__`` silently drops the captured
weights (the result is NaN), while the SavedModel route freezes them correctly; it is also
what ``from_keras_model`` does internally. The batch axis stays dynamic (``shape_signature``
-1, allocated as 1), so the same file serves batch-1 latency and batched evaluation.

Quantization (``export_tflite(quantization=...)``):

* ``"float32"`` -- no optimisation; matches Keras to float round-off.
* ``"float16"`` -- float16 weights, float32 compute on CPU (weights dequantised at load).
* ``"int8"``    -- full-integer: every op runs int8 (``TFLITE_BUILTINS_INT8`` only, so an op
  without an int8 kernel fails the conversion instead of silently falling back to float),
  activations calibrated on representative batches of *training* images
  (:func:`representative_dataset`). **I/O stays float32 by default** (``int8_io="float32"``):
  the converter adds one QUANTIZE after the input and one DEQUANTIZE before the output, so the
  file is a drop-in replacement for the float one. ``int8_io="int8"`` / ``"uint8"`` makes the
  I/O tensors integer instead (for accelerators that want it); :func:`run_interpreter`
  handles either by reading each tensor's ``quantization`` (scale, zero point).

  **Calibration repair** (``repair_calibration=True``, the default): TFLite's calibrator
  logs an op's inputs again after the op ran, and when the interpreter let the op write its
  output into an input's buffer (an input with no other consumer, e.g. ``x / 6`` in
  ``(x / 6) * g``), that input is given the union of its own range and the output's
  (tensorflow/tensorflow#127842). Its int8 scale is then too coarse: on a trained
  ShuffleNetV2+ Small that cost 8.5 points of accuracy. pn-tf wraps the converter's
  calibration step: it runs the calibrated float model again over the same batches with
  every tensor preserved (no buffer reuse), and where a recorded range strictly contains the
  true one it writes the true one back before the converter quantizes. The number of
  repaired tensors is logged.

Atomic writes: each artifact is written under a temporary name in its destination directory
and renamed into place (:func:`atomic_path`); on any failure nothing is left at the final path
and the temporary is removed. Overwriting an existing artifact swaps it only once the new
one is complete.

TensorFlow is imported lazily, so the LiteRT runtime half of this module (the deployment
tools use it) starts in a fraction of a second and needs only ``ai-edge-litert`` and numpy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import numpy as np

from pn_tf.io import atomic_path

log = logging.getLogger(__name__)

QUANTIZATIONS = ("float32", "float16", "int8")
INT8_IO_TYPES = ("float32", "int8", "uint8")
SERVING_ENDPOINT = "serve"
_MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D")


def _write_bytes(path, content):
    with open(path, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def save_bytes(path, content):
    """Writes ``content`` (e.g. a TFLite flatbuffer) to ``path`` atomically. Returns the path."""
    with atomic_path(path) as tmp:
        _write_bytes(tmp, content)
    return os.fspath(path)


# --- Keras and SavedModel -----------------------------------------------------------------------

def export_keras(model, path):
    """Saves ``model`` as a ``.keras`` file, atomically. Returns the path."""
    if not os.fspath(path).endswith(".keras"):
        raise ValueError(f"a Keras archive path must end with '.keras', got {os.fspath(path)!r}")
    with atomic_path(path) as tmp:
        model.save(tmp)
    return os.fspath(path)


def input_spec(model):
    """The serving input: float32 ``[None, H, W, C]`` with the model's static H, W, C.

    Models of other ranks (a 1-D ``[None, T, C]`` audio model, a 3-D one) are served with
    their own static shape, as ``inputs``.
    """
    import tensorflow as tf

    shape = tuple(model.input.shape)
    if len(shape) < 2 or any(d is None for d in shape[1:]):
        raise ValueError(f"export needs a fixed input shape apart from the batch axis, got {shape}")
    return tf.TensorSpec((None,) + shape[1:], tf.float32, name="images" if len(shape) == 4 else "inputs")


def _write_saved_model(model, directory):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_ENDPOINT, lambda images: model(images, training=False),
                         input_signature=[input_spec(model)])
    archive.write_out(directory, verbose=False)


def export_saved_model(model, path):
    """Writes a TF SavedModel directory with one inference signature, atomically.

    The endpoint ``serve`` (also ``serving_default``, which TF Serving and the TFLite
    converter use) maps float32 ``images [None, H, W, C]`` in 0..255 to logits.
    Returns the path.
    """
    with atomic_path(path, directory=True) as tmp:
        _write_saved_model(model, tmp)
    return os.fspath(path)


# --- TFLite conversion --------------------------------------------------------------------------

def _check_quantization(quantization, representative_data, int8_io):
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if int8_io not in INT8_IO_TYPES:
        raise ValueError(f"int8_io must be one of {INT8_IO_TYPES}, got {int8_io!r}")
    if quantization == "int8" and representative_data is None:
        raise ValueError("quantization='int8' needs representative_data (batches of training "
                         "images), e.g. pn_tf.export.representative_dataset('cifar10')")
    if quantization != "int8" and int8_io != "float32":
        raise ValueError(f"int8_io={int8_io!r} only applies to quantization='int8'")


def calibration_batches(representative_data, max_batches=None):
    """A converter ``representative_dataset``: ``[float32 images]`` per step, labels dropped."""

    def generate():
        for step, batch in enumerate(representative_data):
            if max_batches is not None and step >= max_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            yield [np.asarray(images, dtype=np.float32)]

    return generate


def make_converter(saved_model_dir, quantization="float32", representative_data=None,
                   int8_io="float32", max_calibration_batches=None):
    """A ``TFLiteConverter`` for the SavedModel's ``serving_default``, set up as pn-tf exports.

    See :func:`export_tflite` for the arguments. Converting it yields the converter's own int8
    ranges; wrap the conversion in :func:`repaired_calibration` for pn-tf's repaired ones.
    """
    import tensorflow as tf

    _check_quantization(quantization, representative_data, int8_io)
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


def _true_ranges(model_content, input_gen):
    """``{tensor index: (min, max)}`` of the float tensors of ``model_content`` over the batches.

    Every tensor is preserved, so no op overwrites an input in place and each range is the
    tensor's own.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=bytes(model_content), experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    floats = [d["index"] for d in interpreter.get_tensor_details() if d["dtype"] == np.float32]
    ranges = {}
    for (images,) in input_gen():  # pn-tf's models take one image input
        images = np.asarray(images, dtype=np.float32)
        _set_batch(interpreter, len(images))
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
        interpreter.invoke()
        for index in floats:
            try:
                data = interpreter.get_tensor(index)
            except ValueError:  # a tensor without data (e.g. optional / unused)
                continue
            if data.size:
                low, high = ranges.get(index, (np.inf, -np.inf))
                ranges[index] = (min(low, float(data.min())), max(high, float(data.max())))
    return ranges


def repair_calibrated_ranges(calibrated, input_gen):
    """Replaces in-place-widened calibration ranges in a calibrated model by the true ones.

    Args:
        calibrated: bytes of a calibrated (float, min/max-annotated) TFLite model, as the
            converter's calibration step returns it.
        input_gen: the converter's representative dataset (a callable returning a generator
            of ``[images]`` lists: one image input, as every pn-tf model has); it is iterated
            once more.

    Returns ``(content, repaired)``: the model bytes with each recorded range that strictly
    contains the tensor's true range replaced by the true one, and a list of
    ``(tensor name, recorded (min, max), true (min, max))`` for those tensors.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    ranges = _true_ranges(calibrated, input_gen)
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    repaired = []
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        stats = tensor.quantization
        if stats is None or stats.min is None or len(stats.min) != 1 or index not in ranges:
            continue
        recorded = (float(stats.min[0]), float(stats.max[0]))
        low, high = ranges[index]
        slack = 1e-3 * (high - low) + 1e-6
        contains = recorded[0] <= low + slack and recorded[1] >= high - slack
        if contains and (recorded[1] - recorded[0]) - (high - low) > 2 * slack:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            repaired.append((name, recorded, (low, high)))
            stats.min, stats.max = [low], [high]
    if not repaired:
        return calibrated, repaired
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), repaired


@contextlib.contextmanager
def repaired_calibration(repaired):
    """Within the block, the TFLite converter's calibration step repairs its ranges.

    ``repaired``: a list; each repaired tensor's ``(name, recorded, true)`` is appended.
    """
    try:
        from tensorflow.lite.python.optimize import calibrator
        original = calibrator.Calibrator.calibrate
    except (ImportError, AttributeError):  # the private hook moved: convert unrepaired
        log.warning("int8 calibration repair unavailable in this TensorFlow; ranges of "
                    "in-place ops may be too wide (tensorflow/tensorflow#127842)")
        yield
        return

    def calibrate(self, dataset_gen):
        content, fixed = repair_calibrated_ranges(original(self, dataset_gen), dataset_gen)
        repaired.extend(fixed)
        return content

    calibrator.Calibrator.calibrate = calibrate
    try:
        yield
    finally:
        calibrator.Calibrator.calibrate = original


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
        log.info("int8 calibration: repaired the in-place-widened ranges of %d tensors "
                 "(tensorflow/tensorflow#127842), e.g. %s", len(repaired), repaired[0][0])
    if repairs is not None:
        repairs.extend(repaired)
    return content


def export_tflite(model, path, quantization="float32", representative_data=None, *,
                  int8_io="float32", max_calibration_batches=None, repair_calibration=True,
                  repairs=None):
    """Converts ``model`` to a ``.tflite`` file through the TFLite converter, atomically.

    Args:
        model: a keras.Model, or the path of a SavedModel written by
            :func:`export_saved_model` (converting several quantizations from one SavedModel
            saves re-exporting it each time).
        path: str or PathLike. The ``.tflite`` file to write.
        quantization: ``"float32"``, ``"float16"`` or ``"int8"`` (full integer).
        representative_data: for ``"int8"``: an iterable of image batches or
            ``(images, labels)`` batches (e.g. :func:`representative_dataset`), float32 pixels.
        int8_io: ``"float32"`` (default: float I/O around the integer graph), ``"int8"`` or
            ``"uint8"``.
        max_calibration_batches: int or None. Stop calibrating after this many batches.
        repair_calibration: bool. For ``"int8"``: repair calibration ranges widened by
            in-place ops (see the module docstring). ``False`` gives the converter's own.
        repairs: list or None. Receives the repaired tensors (see :func:`convert_saved_model`).

    Returns the path.
    """
    _check_quantization(quantization, representative_data, int8_io)
    if isinstance(model, (str, os.PathLike)):
        content = convert_saved_model(model, quantization, representative_data, int8_io,
                                      max_calibration_batches, repair_calibration, repairs)
    else:
        with tempfile.TemporaryDirectory(prefix="pn_tf_export_") as tmp:
            saved_model = os.path.join(tmp, "saved_model")
            _write_saved_model(model, saved_model)
            content = convert_saved_model(saved_model, quantization, representative_data,
                                          int8_io, max_calibration_batches, repair_calibration,
                                          repairs)
    return save_bytes(path, content)


def representative_dataset(dataset="cifar10", num_images=512, batch_size=32, image_size=None,
                           data_dir=None, split="train"):
    """Calibration batches for int8: the first ``num_images`` training images, unaugmented."""
    from pn_tf.data import make_dataset

    return make_dataset(dataset, split, batch_size, training=False, image_size=image_size,
                        data_dir=data_dir, take=num_images, drop_remainder=False)


# --- LiteRT runtime -----------------------------------------------------------------------------

def load_interpreter(path, num_threads=None):
    """A LiteRT interpreter for a ``.tflite`` file, tensors allocated.

    Raises FileNotFoundError for a missing file and ValueError for one that is not a
    TFLite model.
    """
    from ai_edge_litert.interpreter import Interpreter

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no TFLite model at {path!r}")
    try:
        interpreter = Interpreter(model_path=path, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"{path!r} is not a valid TFLite model: {err}") from err
    return interpreter


def quantize(values, detail):
    """Float values -> the tensor's dtype, using its (scale, zero point) if it is integer."""
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return np.asarray(values, dtype=dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    q = np.round(np.asarray(values, np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values, detail):
    """A tensor's values as float32, undoing its (scale, zero point) if it is integer."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return np.asarray(values, dtype=np.float32)
    scale, zero_point = detail["quantization"]
    return (np.asarray(values, np.float32) - zero_point) * np.float32(scale)


def input_size(interpreter):
    """``(height, width)`` of the model's image input."""
    shape = interpreter.get_input_details()[0]["shape"]
    return int(shape[1]), int(shape[2])


def _set_batch(interpreter, batch):
    detail = interpreter.get_input_details()[0]
    if detail["shape"][0] != batch:
        interpreter.resize_tensor_input(detail["index"], [batch] + list(detail["shape"][1:]))
        interpreter.allocate_tensors()


def _fixed_batch(interpreter):
    signature = interpreter.get_input_details()[0]["shape_signature"]
    return None if signature[0] == -1 else int(signature[0])


def run_interpreter(interpreter, images, batch_size=64):
    """Float logits ``[N, classes]`` for float pixel ``images [N, H, W, C]``.

    Integer I/O tensors are (de)quantized with their own scale and zero point. A dynamic
    batch axis is resized to ``batch_size`` chunks; a fixed one is fed chunk by chunk.
    """
    images = np.asarray(images, dtype=np.float32)
    step = _fixed_batch(interpreter) or batch_size
    outputs = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        if _fixed_batch(interpreter) is None:
            _set_batch(interpreter, len(chunk))
        in_detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(in_detail["index"], quantize(chunk, in_detail))
        interpreter.invoke()
        out_detail = interpreter.get_output_details()[0]
        outputs.append(dequantize(interpreter.get_tensor(out_detail["index"]), out_detail))
    return np.concatenate(outputs, axis=0)


def tflite_predict(path, images, num_threads=None, batch_size=64):
    """Float logits of the ``.tflite`` model at ``path`` on float pixel ``images``."""
    return run_interpreter(load_interpreter(path, num_threads), images, batch_size)


def _interpreter(path_or_interpreter, num_threads=None):
    """``path_or_interpreter`` itself if it is already a loaded interpreter, else loads it."""
    if hasattr(path_or_interpreter, "_get_ops_details"):
        return path_or_interpreter
    return load_interpreter(path_or_interpreter, num_threads)


def tflite_macs(path):
    """Multiply-accumulates of one image, counted from the ``.tflite`` graph itself.

    Sums CONV_2D (``H_out W_out C_out k_h k_w C_in/groups``, the filter being
    ``[C_out, k_h, k_w, C_in/groups]``), DEPTHWISE_CONV_2D (``H_out W_out C k_h k_w``),
    FULLY_CONNECTED (``rows * units * in``), TRANSPOSE_CONV (``H_in W_in C_in k_h k_w C_out``,
    the filter ``[C_out, k_h, k_w, C_in]``) and CONV_3D (``D_out H_out W_out C_out k_d k_h k_w
    C_in``, the filter ``[k_d, k_h, k_w, C_in, C_out]``) over the interpreter's op list
    (``Interpreter._get_ops_details``, the only op-level listing ai-edge-litert 2.3 exposes
    in Python) with tensor shapes at batch 1, after one run on zeros (so that shapes computed
    at run time are known) -- the convention of :mod:`pn_tf.graph.flops`.
    ``path`` may also be an interpreter already loaded (it is resized to batch 1 if its batch
    is dynamic).
    """
    interpreter = _interpreter(path)
    if _fixed_batch(interpreter) is None:
        _set_batch(interpreter, 1)
    detail = interpreter.get_input_details()[0]
    batch = int(detail["shape"][0])
    # Shapes computed at run time (a Dense on a feature map reshapes by the input's shape)
    # are only known once the graph ran.
    interpreter.set_tensor(detail["index"], quantize(np.zeros(detail["shape"], np.float32), detail))
    interpreter.invoke()
    shapes = {t["index"]: tuple(int(d) for d in t["shape"])
              for t in interpreter.get_tensor_details()}
    total = 0
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        if name not in _MAC_OPS:
            continue
        weights, out = shapes[op["inputs"][1]], shapes[op["outputs"][0]]
        if name == "TRANSPOSE_CONV":  # each input value scatters one full kernel
            total += int(np.prod(shapes[op["inputs"][2]])) * int(np.prod(weights[:3]))
            continue
        if name == "FULLY_CONNECTED":
            per_output = weights[-1]
        elif name == "CONV_3D":
            per_output = int(np.prod(weights[:4]))
        else:
            per_output = weights[1] * weights[2] * (weights[3] if name == "CONV_2D" else 1)
        total += int(np.prod(out)) * per_output
    return total // batch


def delegation(path, num_threads=1):
    """How the default (XNNPACK) delegate took the graph: ``{"partitions", "not_delegated"}``.

    ``partitions`` counts the delegate's subgraphs (1-2 is a graph run wholly by XNNPACK;
    every op it rejects splits it further and runs in TFLite's builtin kernels);
    ``not_delegated`` counts, per op type, the ops left outside whose outputs feed a
    partition. Read off the interpreter's node list after delegation. ``path`` may also be
    an interpreter already loaded with the default delegate.
    """
    ops = _interpreter(path, num_threads)._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    feeds = {int(t) for op in delegates for t in op["inputs"]}
    made_inside = {int(t) for op in delegates for t in op["outputs"]}
    outside = {}
    for op in ops:
        outputs = {int(t) for t in op["outputs"]}
        if op["op_name"] != "DELEGATE" and outputs & feeds and not outputs & made_inside:
            outside[op["op_name"]] = outside.get(op["op_name"], 0) + 1
    return {"partitions": len(delegates), "not_delegated": outside}


# --- batch-1 latency ----------------------------------------------------------------------------

def batch1_interpreter(path, num_threads=1, seed=0):
    """An interpreter at batch 1, its input filled with one random image of raw pixels."""
    interpreter = load_interpreter(path, num_threads)
    detail = interpreter.get_input_details()[0]
    if detail["shape_signature"][0] == -1 and detail["shape"][0] != 1:
        interpreter.resize_tensor_input(detail["index"], [1] + list(detail["shape"][1:]))
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
    image = np.random.default_rng(seed).uniform(0, 255, detail["shape"]).astype(np.float32)
    interpreter.set_tensor(detail["index"], quantize(image, detail))
    return interpreter


def time_interleaved(interpreters, runs, warmup=20, block=10, num_threads=1):
    """``(times, cpu_share)``: per-model lists of ``runs`` invoke() times in seconds, measured
    round-robin, and the CPU share the timing got (:func:`with_cpu_share`; ``num_threads``:
    the interpreters' thread count). Logs a warning when the share is below
    :data:`BUSY_CPU_SHARE` (other work was running).

    Each round runs a block of invocations of every model, in a rotating order, so a change
    of machine load hits all models alike.
    """
    times, share = with_cpu_share(lambda: _time_rounds(interpreters, runs, warmup, block), num_threads)
    warning = busy_timing_warning(share)
    if warning:
        log.warning(warning)
    return times, share


def _time_rounds(interpreters, runs, warmup, block):
    import time

    for interpreter in interpreters:
        for _ in range(warmup):
            interpreter.invoke()
    times = [[] for _ in interpreters]
    order = list(range(len(interpreters)))
    while len(times[0]) < runs:
        n = min(block, runs - len(times[0]))
        for i in order:
            invoke = interpreters[i].invoke
            for _ in range(n):
                start = time.perf_counter()
                invoke()
                times[i].append(time.perf_counter() - start)
        order = order[1:] + order[:1]
    return times


# Below this share of the CPU time it asked for, a timing ran beside other work (see cpu_share).
BUSY_CPU_SHARE = 0.85


def measure_latency(paths, num_threads=1, runs=100, warmup=20, block=10, seed=0):
    """``{path: {"median_ms", "p90_ms", "cpu_share"}}``: batch-1 latency of each file, timed interleaved.

    ``cpu_share`` (the same for every file) is the process CPU time spent during the timing
    over ``num_threads`` x its wall time: about 1 on an idle machine, lower when other work
    took cores away from the interpreter (then the latencies are inflated and unreliable;
    below :data:`BUSY_CPU_SHARE` a warning is logged).
    """
    interpreters = [batch1_interpreter(p, num_threads, seed) for p in paths]
    times, share = time_interleaved(interpreters, runs, warmup, block, num_threads)
    return {p: {"median_ms": float(np.median(t) * 1e3), "p90_ms": float(np.percentile(t, 90) * 1e3),
                "cpu_share": float(share)}
            for p, t in zip(paths, times)}


def with_cpu_share(fn, num_threads):
    """``(fn(), share)``: share = CPU time of the threads that ran ``fn``'s interpreters / (wall
    time x ``num_threads``).

    With one interpreter thread, TFLite runs ``invoke()`` on the calling thread, so its CPU
    time alone is counted (``time.thread_time``). The process's CPU time would also count
    threads that have nothing to do with the timing: numpy's OpenBLAS starts one worker per
    extra core at import and busy-waits in it for a while after every matrix product, which
    made a 1-thread timing read as using 2 cores (share 2.0) on a 2-core machine. With more
    interpreter threads the workers are other threads of the process, so the process's CPU
    time is used and any other busy thread of the process inflates the share.
    """
    import time

    clock = time.thread_time if num_threads == 1 else time.process_time
    cpu, wall = clock(), time.perf_counter()
    result = fn()
    share = (clock() - cpu) / (max(time.perf_counter() - wall, 1e-9) * num_threads)
    return result, float(share)


def busy_timing_warning(cpu_share):
    """A one-line warning when a latency timing did not get the CPU it asked for, else None."""
    if cpu_share >= BUSY_CPU_SHARE:
        return None
    return (f"the latency timing got only {cpu_share:.0%} of the CPU time it asked for: other work "
            "was running, so these latencies are inflated and not comparable; time again on a quiet "
            "machine (python tools/bench_tflite.py --models=A.tflite,B.tflite)")


# --- checks -------------------------------------------------------------------------------------

def keras_outputs(model, images):
    """Inference-mode logits of a Keras model as a numpy array."""
    return np.asarray(model(np.asarray(images, np.float32), training=False))


def saved_model_predict(path, images):
    """Logits from a reloaded SavedModel's ``serving_default`` signature."""
    import tensorflow as tf

    serving = tf.saved_model.load(os.fspath(path)).signatures["serving_default"]
    outputs = serving(tf.constant(np.asarray(images, np.float32)))
    if len(outputs) != 1:
        raise ValueError(f"expected one serving output, got {sorted(outputs)}")
    return next(iter(outputs.values())).numpy()


def keras_file_predict(path, images):
    """Logits from a reloaded ``.keras`` file."""
    import keras

    import pn_tf.layers  # noqa: F401  (registers the custom layers)

    return keras_outputs(keras.saving.load_model(os.fspath(path)), images)


def artifact_predict(path, images):
    """Logits from any exported artifact: ``.keras``, ``.tflite`` or a SavedModel directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return saved_model_predict(path, images)
    if path.endswith(".keras"):
        return keras_file_predict(path, images)
    if path.endswith(".tflite"):
        return tflite_predict(path, images)
    raise ValueError(f"unknown artifact type: {path!r}")


def compare_outputs(expected, actual):
    """Maximum absolute difference of two output arrays of the same shape."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    if expected.shape != actual.shape:
        raise ValueError(f"output shapes differ: {expected.shape} vs {actual.shape}")
    return float(np.max(np.abs(expected - actual))) if expected.size else 0.0


def verify_export(model, path, images):
    """Max abs difference between ``model``'s logits and the artifact's at ``path``."""
    return compare_outputs(keras_outputs(model, images), artifact_predict(path, images))


def top1_accuracy(predict, dataset):
    """Top-1 accuracy of ``predict(images) -> logits`` over ``(images, labels)`` batches."""
    correct = total = 0
    for images, labels in dataset:
        logits = np.asarray(predict(np.asarray(images)))
        correct += int(np.sum(np.argmax(logits, axis=-1) == np.asarray(labels)))
        total += len(labels)
    if not total:
        raise ValueError("top1_accuracy got an empty dataset")
    return correct / total


# --- everything at once -------------------------------------------------------------------------

def export_all(model, directory, name, representative_data=None, check_images=None,
               quantizations=QUANTIZATIONS, max_calibration_batches=None, repair_calibration=True):
    """Writes ``name.keras``, ``name_saved_model/`` and ``name_<q>.tflite`` into ``directory``.

    The SavedModel is exported once and every TFLite file is converted from it. With
    ``check_images`` each artifact's max abs logit difference against ``model`` is measured.

    Returns ``{artifact: {"path": ..., "max_abs_diff": float or None}}``.
    """
    directory = os.fspath(directory)
    saved_model = os.path.join(directory, f"{name}_saved_model")
    paths = {"keras": export_keras(model, os.path.join(directory, f"{name}.keras")),
             "saved_model": export_saved_model(model, saved_model)}
    for quantization in quantizations:
        paths[f"tflite_{quantization}"] = export_tflite(
            saved_model, os.path.join(directory, f"{name}_{quantization}.tflite"), quantization,
            representative_data if quantization == "int8" else None,
            max_calibration_batches=max_calibration_batches, repair_calibration=repair_calibration)
    reference = None if check_images is None else keras_outputs(model, check_images)
    return {kind: {"path": path,
                   "max_abs_diff": None if reference is None
                   else compare_outputs(reference, artifact_predict(path, check_images))}
            for kind, path in paths.items()}
