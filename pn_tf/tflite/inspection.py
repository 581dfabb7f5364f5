"""What a ``.tflite`` graph is: its multiply-accumulates and how XNNPACK delegated it.

Both read the LiteRT interpreter's op list (``Interpreter._get_ops_details``, the only
op-level listing ai-edge-litert 2.3 exposes in Python); no TensorFlow is needed.
"""

from __future__ import annotations

import numpy as np

from pn_tf.tflite.runtime import fixed_batch, load_interpreter, quantize, set_batch

# The TFLite ops whose multiply-accumulates tflite_macs counts.
_MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D", "BATCH_MATMUL")


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
    C_in``, the filter ``[k_d, k_h, k_w, C_in, C_out]``) and BATCH_MATMUL (``out * K``: attention's
    QK^T and AV products, where ``K`` is the contracted axis of the first operand) over the
    interpreter's op list
    (``Interpreter._get_ops_details``, the only op-level listing ai-edge-litert 2.3 exposes
    in Python) with tensor shapes at batch 1, after one run on zeros (so that shapes computed
    at run time are known) -- the convention of :mod:`pn_tf.graph.flops`.
    ``path`` may also be an interpreter already loaded (it is resized to batch 1 if its batch
    is dynamic).
    """
    interpreter = _interpreter(path)
    if fixed_batch(interpreter) is None:
        set_batch(interpreter, 1)
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
        if name == "BATCH_MATMUL":  # lhs [..., M, K] (or [..., K, M] adjointed), out [..., M, N]
            lhs = shapes[op["inputs"][0]]
            total += int(np.prod(out)) * (lhs[-1] * lhs[-2] // out[-2])
            continue
        if name == "TRANSPOSE_CONV":  # each input value scatters one full kernel
            total += int(np.prod(shapes[op["inputs"][2]])) * int(np.prod(weights[:3]))
            continue
        if name == "FULLY_CONNECTED":  # rows * units * in, read off the input: an output's
            # shape can stay the one allocated before the run (MiT's dense layers after a reshape)
            total += int(np.prod(shapes[op["inputs"][0]])) * weights[0]
            continue
        if name == "CONV_3D":
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
