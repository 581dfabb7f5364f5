"""The structural check of a model: gate, extract at random gates, compare, convert.

:func:`check_model` is what ``tools/coverage.py`` and ``tools/autoprune.py
--keras_application`` report for each model, and what the tests assert: with random gate
logits and a FLOPs target, the extracted model must equal the gated model with hard
0/1 masks, the identity-gated copy must equal the original exactly, the exact MACs must
land on the target, and the pruned model must convert to TFLite.
"""

import os
import tempfile

import keras
import numpy as np

from pn_tf.auto._util import _quiet
from pn_tf.auto.analysis import analyse
from pn_tf.auto.insert import insert_gates
from pn_tf.auto.pruning import random_gate_logits
from pn_tf.graph import FlopsModel, count_params
from pn_tf.tflite.convert import error_line


def randomize_batchnorm(model, seed=0):
    """Non-trivial BN statistics (nested models too), so that a revived pruned channel would show."""
    rng = np.random.RandomState(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.built:
            values = layer.get_weights()
            shape = values[0].shape
            fresh = [rng.uniform(0.5, 1.5, shape) if layer.scale else None,
                     rng.randn(*shape) * 0.3 if layer.center else None,
                     rng.randn(*shape) * 0.3, rng.uniform(0.5, 1.5, shape)]
            layer.set_weights([v for v in fresh if v is not None])
    return model


def randomize_affine(model, seed=0):
    """Non-zero biases and non-unit normalization scales (nested models too), as a trained model
    has them. Keras initializes biases and norm offsets to zero and norm scales to one, and the
    TFLite converter folds an addition of zeros (or product with ones) away, so an untrained
    model converts to fewer ops than the same model does after a single training step: its
    latency is not the latency of the model it stands for. BatchNormalization is left to
    :func:`randomize_batchnorm` (its moving statistics too)."""
    rng = np.random.RandomState(seed + 1)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) or not layer.built:
            continue
        for variable in layer._trainable_variables:  # the layer's own, not its sub-layers'
            name = variable.name.split("/")[-1]
            shape = tuple(variable.shape)
            if name in ("bias", "beta"):
                variable.assign(rng.randn(*shape).astype(variable.dtype) * 0.05)
            elif name == "gamma":
                variable.assign(rng.uniform(0.8, 1.2, shape).astype(variable.dtype))
    return model


def sample_inputs(model, batch=2, seed=0):
    """Random inputs for ``model``: pixels 0..255 for images, N(0, 1) features otherwise."""
    rng = np.random.RandomState(seed)
    shape = (batch,) + tuple(int(d) for d in model.inputs[0].shape[1:])
    if len(shape) == 4:
        return rng.uniform(0, 255, shape).astype("float32")
    return rng.randn(*shape).astype("float32")


def _is_keras_own(op):
    return type(op).__module__.startswith("keras.")


def _tflite_check(narrow, x):
    """(converts, max abs difference to Keras or the error, MACs counted in the TFLite graph)."""
    from pn_tf.export import export_tflite
    from pn_tf.tflite.inspection import tflite_macs
    from pn_tf.tflite.runtime import tflite_predict

    with tempfile.TemporaryDirectory(prefix="pn_tf_check_") as tmp:
        path = os.path.join(tmp, "pruned.tflite")
        try:
            export_tflite(narrow, path, "float32")
        except Exception as err:  # noqa: BLE001 - reported, not raised
            return False, error_line(err), None
        diff = np.abs(tflite_predict(path, x) - np.asarray(narrow(x, training=False)))
        return True, float(diff.max()), tflite_macs(path)


def check_model(model, target=0.4, seed=0, policy="all", round_to=1, tflite=True, x=None):
    """One coverage row for ``model`` (see the module docstring). Nothing is trained.

    Args:
        model: a built Keras model (functional, Sequential or nested).
        target: FLOPs reduction to extract at.
        seed: seeds the gate logits and the inputs.
        tflite: also convert the pruned model to TFLite float32 and compare.
        x: inputs to compare on (default: :func:`sample_inputs`).

    Raises:
        ValueError: the model has no prunable channel group (the message says why).

    Returns:
        A JSON-able dict: ``groups``, ``prunable_share`` (share of MACs in layers whose
        cost depends on a pruned group), ``opaque`` (Keras's own layers/ops left opaque),
        ``opaque_custom``, ``identity_max_abs_diff``, ``max_abs_diff``, ``output_scale``,
        ``flops``, ``pruned_flops``, ``flops_reduction``, ``landing_error``, ``params``,
        ``pruned_params``, ``tflite`` and ``tflite_max_abs_diff`` (or ``tflite_error``),
        ``tflite_macs`` (the pruned model's MACs counted from the TFLite graph, an
        independent recount of ``pruned_flops``), ``excluded``, ``warnings``.
    """
    x = sample_inputs(model, seed=seed) if x is None else x
    analysis = analyse(model, policy=policy)
    graph = analysis.graph
    if not analysis.groups:
        raise ValueError(f"{model.name} has no prunable channel groups: "
                         + ("; ".join(analysis.warnings) or "every channel space is fixed"))
    gated = insert_gates(model, analysis.groups, policy=policy)
    original = np.asarray(model(x, training=False))
    identity_diff = float(np.abs(original - np.asarray(gated(x, training=False))).max())
    random_gate_logits(gated, seed)
    from pn_tf.extract import extract_at

    with _quiet():  # the pipeline's extraction and check; a failure is this row's finding
        extraction = extract_at(gated, target, round_to=round_to, images=x, strict=False)
    narrow, selection, gated_graph = extraction.model, extraction.selection, extraction.graph
    flops = FlopsModel(gated_graph)
    opaque = [name for name in graph.opaque_layers if _is_keras_own(graph.operation(name))]
    row = {
        "model": model.name,
        "input_shape": [int(d) for d in model.inputs[0].shape[1:]],
        "groups": len(gated_graph.groups),
        "prunable_share": flops.prunable / flops.total if flops.total else 0.0,
        "opaque": opaque,
        "opaque_custom": [name for name in graph.opaque_layers if name not in opaque],
        "identity_max_abs_diff": identity_diff,
        "max_abs_diff": extraction.max_abs_diff,
        "output_scale": extraction.output_scale,
        "flops": selection.total_cost,
        "pruned_flops": selection.cost,
        "pruned_flops_recount": extraction.flops,
        "target_flops_reduction": target,
        "flops_reduction": selection.reduction,
        "landing_error": abs(selection.reduction - target),
        "params": count_params(model),
        "pruned_params": count_params(narrow),
        "group_widths": [int(g.size) for g in gated_graph.groups],
        "kept_widths": selection.widths,
        "excluded": analysis.excluded,
        "warnings": analysis.warnings + list(selection.notes),
    }
    row["equivalent"] = extraction.equivalent
    if tflite:
        row["tflite"], detail, row["tflite_macs"] = _tflite_check(narrow, x)
        row["tflite_max_abs_diff" if row["tflite"] else "tflite_error"] = detail
        if not row["tflite"]:  # is it pruning, or does the original not convert either?
            row["tflite_original"] = _tflite_check(model, x)[0]
    return row
