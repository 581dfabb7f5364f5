"""int8 calibration: the representative data, and the repair of in-place-widened ranges.

Calibration data: batches of *training* images, unaugmented (:func:`representative_dataset`),
handed to the converter as ``[float32 images]`` per step (:func:`calibration_batches`).

**Empty ranges** (:func:`widen_empty_ranges`): a tensor that was zero on every calibration
batch (a ReLU channel that never fired: likely once a group is pruned to one or two channels,
and in the latency tables' narrow units on random weights) is recorded with the range [0, 0];
its int8 scale is then 0, which XNNPACK refuses ("failed to create XNNPACK runtime": the whole
model does not load). Such ranges are widened to [0, :data:`MIN_RANGE`]: the tensor stays exactly
zero in int8 and the model runs.

**Calibration repair** (:func:`repaired_calibration`): TFLite's calibrator logs an op's inputs
again after the op ran, and when the interpreter let the op write its output into an input's
buffer (an input with no other consumer, e.g. ``x / 6`` in ``(x / 6) * g``), that input is given
the union of its own range and the output's (tensorflow/tensorflow#127842). Its int8 scale is
then too coarse: on a trained ShuffleNetV2+ Small that cost 8.5 points of accuracy. pn-tf wraps
the converter's calibration step: it runs the calibrated float model again over the same
batches with every tensor preserved (no buffer reuse), and where a recorded range strictly
contains the true one it writes the true one back before the converter quantizes
(:func:`repair_calibrated_ranges`).
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from pn_tf.tflite.runtime import set_batch

# The narrowest range a calibrated tensor keeps (see widen_empty_ranges).
MIN_RANGE = 1e-3

log = logging.getLogger(__name__)


def calibration_batches(representative_data, max_batches=None):
    """A converter ``representative_dataset``: ``[float32 images]`` per step, labels dropped."""

    def generate():
        for step, batch in enumerate(representative_data):
            if max_batches is not None and step >= max_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            yield [np.asarray(images, dtype=np.float32)]

    return generate


def representative_dataset(dataset="cifar10", num_images=512, batch_size=32, image_size=None,
                           data_dir=None, split="train"):
    """Calibration batches for int8: the first ``num_images`` training images, unaugmented."""
    from pn_tf.data import make_dataset

    return make_dataset(dataset, split, batch_size, training=False, image_size=image_size,
                        data_dir=data_dir, take=num_images, drop_remainder=False)


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
        set_batch(interpreter, len(images))
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


def _tensor_name(tensor):
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def widen_empty_ranges(model):
    """Widens each recorded calibration range narrower than :data:`MIN_RANGE` around zero, in
    place on a flatbuffer model object; returns ``[(name, recorded, widened)]``."""
    widened = []
    for tensor in model.subgraphs[0].tensors:
        stats = tensor.quantization
        if stats is None or stats.min is None or stats.max is None or len(stats.min) != 1:
            continue
        recorded = (float(stats.min[0]), float(stats.max[0]))
        low, high = min(recorded[0], 0.0), max(recorded[1], 0.0)  # int8 ranges hold zero anyway
        if high - low >= MIN_RANGE:
            continue
        high = low + MIN_RANGE
        stats.min, stats.max = [low], [high]
        widened.append((_tensor_name(tensor), recorded, (low, high)))
    return widened


def repair_calibrated_ranges(calibrated, input_gen, true_ranges=True):
    """Replaces in-place-widened calibration ranges in a calibrated model by the true ones.

    Args:
        calibrated: bytes of a calibrated (float, min/max-annotated) TFLite model, as the
            converter's calibration step returns it.
        input_gen: the converter's representative dataset (a callable returning a generator
            of ``[images]`` lists: one image input, as every pn-tf model has); it is iterated
            once more.

        true_ranges: bool. Also replace widened ranges by the true ones (False: only widen the
            empty ones, for models of several inputs).

    Returns ``(content, repaired)``: the model bytes with each recorded range that strictly
    contains the tensor's true range replaced by the true one and each empty range widened
    (:func:`widen_empty_ranges`), and a list of ``(tensor name, recorded (min, max), new (min,
    max))`` for those tensors.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    ranges = _true_ranges(calibrated, input_gen) if true_ranges else {}
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
            repaired.append((_tensor_name(tensor), recorded, (low, high)))
            stats.min, stats.max = [low], [high]
    repaired += widen_empty_ranges(model)
    if not repaired:
        return calibrated, repaired
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), repaired


@contextlib.contextmanager
def repaired_calibration(repaired, true_ranges=True):
    """Within the block, the TFLite converter's calibration step repairs its ranges.

    ``repaired``: a list; each repaired tensor's ``(name, recorded, new)`` is appended.
    ``true_ranges``: see :func:`repair_calibrated_ranges` (False for models of several inputs).
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
        content, fixed = repair_calibrated_ranges(original(self, dataset_gen), dataset_gen, true_ranges)
        repaired.extend(fixed)
        return content

    calibrator.Calibrator.calibrate = calibrate
    try:
        yield
    finally:
        calibrator.Calibrator.calibrate = original
