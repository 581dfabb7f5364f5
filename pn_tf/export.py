"""Export: a Keras model to ``.keras``, SavedModel and TFLite (float32 / float16 / int8) files.

Every model of the zoo normalises inside, so every artifact takes raw float32 pixels
``[B, H, W, 3]`` in 0..255 and returns logits ``[B, num_classes]``; nothing beside the file is
needed to run it. :func:`export_all` writes them all and checks each against the Keras model
(:func:`verify_export`, :func:`artifact_predict`).

Conversion path. TFLite conversion always goes Keras -> SavedModel (an explicit ``serve``
signature, also exposed as ``serving_default``, for ``[None, H, W, 3]`` float32) ->
``tf.lite.TFLiteConverter.from_saved_model`` (:mod:`pn_tf.tflite.convert`, which also says
what each quantization is and why not ``from_concrete_functions``). The batch axis stays
dynamic (``shape_signature`` -1, allocated as 1), so the same file serves batch-1 latency and
batched evaluation. int8 calibration data and its range repair are
:mod:`pn_tf.tflite.calibration`; running, inspecting and timing the ``.tflite`` files is
:mod:`pn_tf.tflite.runtime`, :mod:`pn_tf.tflite.inspection` and :mod:`pn_tf.tflite.timing`.

Atomic writes: each artifact is written under a temporary name in its destination directory
and renamed into place (:func:`pn_tf.io.atomic_path`); on any failure nothing is left at the
final path and the temporary is removed. Overwriting an existing artifact swaps it only once
the new one is complete.

TensorFlow is imported lazily.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from pn_tf import io as io_lib
from pn_tf.tflite import convert, runtime

SERVING_ENDPOINT = "serve"


# --- Keras and SavedModel -----------------------------------------------------------------------

def export_keras(model, path):
    """Saves ``model`` as a ``.keras`` file, atomically. Returns the path."""
    if not os.fspath(path).endswith(".keras"):
        raise ValueError(f"a Keras archive path must end with '.keras', got {os.fspath(path)!r}")
    with io_lib.atomic_path(path) as tmp:
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
    with io_lib.atomic_path(path, directory=True) as tmp:
        _write_saved_model(model, tmp)
    return os.fspath(path)


# --- TFLite ---------------------------------------------------------------------------------------

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
            ``(images, labels)`` batches (e.g.
            :func:`pn_tf.tflite.calibration.representative_dataset`), float32 pixels.
        int8_io: ``"float32"`` (default: float I/O around the integer graph), ``"int8"`` or
            ``"uint8"``.
        max_calibration_batches: int or None. Stop calibrating after this many batches.
        repair_calibration: bool. For ``"int8"``: repair calibration ranges widened by
            in-place ops (see :mod:`pn_tf.tflite.calibration`). ``False`` gives the
            converter's own.
        repairs: list or None. Receives the repaired tensors (see
            :func:`pn_tf.tflite.convert.convert_saved_model`).

    Returns the path.
    """
    convert.check_quantization(quantization, representative_data, int8_io)
    if isinstance(model, (str, os.PathLike)):
        content = convert.convert_saved_model(model, quantization, representative_data, int8_io,
                                              max_calibration_batches, repair_calibration, repairs)
    else:
        with tempfile.TemporaryDirectory(prefix="pn_tf_export_") as tmp:
            saved_model = os.path.join(tmp, "saved_model")
            _write_saved_model(model, saved_model)
            content = convert.convert_saved_model(saved_model, quantization, representative_data,
                                                  int8_io, max_calibration_batches,
                                                  repair_calibration, repairs)
    return io_lib.save_bytes(path, content)


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
        return runtime.tflite_predict(path, images)
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
               quantizations=convert.QUANTIZATIONS, max_calibration_batches=None,
               repair_calibration=True):
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
