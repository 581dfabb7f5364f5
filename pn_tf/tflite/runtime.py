"""The LiteRT runtime: load a ``.tflite`` interpreter, (de)quantize its I/O, predict logits.

Needs only ``ai-edge-litert`` and numpy (no TensorFlow). pn-tf's files take raw float32
pixels ``[B, H, W, 3]`` in 0..255 and return logits; an int8 file with integer I/O
(``int8_io="int8"`` / ``"uint8"``) is fed and read through each tensor's ``quantization``
(scale, zero point), so :func:`run_interpreter` handles every variant alike.
"""

from __future__ import annotations

import os

import numpy as np


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


def set_batch(interpreter, batch):
    """Resizes the (dynamic) batch axis of the model's input to ``batch``, if it differs."""
    detail = interpreter.get_input_details()[0]
    if detail["shape"][0] != batch:
        interpreter.resize_tensor_input(detail["index"], [batch] + list(detail["shape"][1:]))
        interpreter.allocate_tensors()


def fixed_batch(interpreter):
    """The input's fixed batch size, or None when its batch axis is dynamic."""
    signature = interpreter.get_input_details()[0]["shape_signature"]
    return None if signature[0] == -1 else int(signature[0])


def run_interpreter(interpreter, images, batch_size=64):
    """Float logits ``[N, classes]`` for float pixel ``images [N, H, W, C]``.

    Integer I/O tensors are (de)quantized with their own scale and zero point. A dynamic
    batch axis is resized to ``batch_size`` chunks; a fixed one is fed chunk by chunk.
    """
    images = np.asarray(images, dtype=np.float32)
    step = fixed_batch(interpreter) or batch_size
    outputs = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        if fixed_batch(interpreter) is None:
            set_batch(interpreter, len(chunk))
        in_detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(in_detail["index"], quantize(chunk, in_detail))
        interpreter.invoke()
        out_detail = interpreter.get_output_details()[0]
        outputs.append(dequantize(interpreter.get_tensor(out_detail["index"]), out_detail))
    return np.concatenate(outputs, axis=0)


def tflite_predict(path, images, num_threads=None, batch_size=64):
    """Float logits of the ``.tflite`` model at ``path`` on float pixel ``images``."""
    return run_interpreter(load_interpreter(path, num_threads), images, batch_size)
