"""Export: the pruned and the baseline model as .keras, SavedModel and TFLite files.

Every file is checked against its Keras model on held-out images; the TFLite files'
accuracy is measured on the report's split. ``labels.txt`` (class names, label k on
line k) is written beside the ``.tflite`` files when the data names its classes.
"""

from pn_tf.pipeline import artifacts
from pn_tf.pipeline.errors import PipelineError
from pn_tf.pipeline.stages.baseline import weights_of


def deployable(network):
    """The gated network without its gates (identity gates are no-ops): what users deploy."""
    from pn_tf.auto import strip_gates
    from pn_tf.extract import simplify
    from pn_tf.layers import gate_layers

    return simplify(strip_gates(network), {gate.name for gate in gate_layers(network)})


def calibration_batches(ctx):
    """The int8 calibration batches: the first ``--calibration_images`` training images."""
    return ctx.batches("train", 32, take=ctx.config.calibration_images)


def baseline_network(ctx):
    """The unpruned network the export writes and the report times (the baseline stage's weights)."""
    with ctx.strategy.scope():
        return deployable(ctx.load_network(weights_of(ctx)))


def check(ctx):
    """A user's model that TFLite cannot convert is refused before any stage, since the export
    and the report need its TFLite files (Swin's tf.Roll, a Conv3D network's MaxPool3D): its
    unpruned network is converted to float32 once, into a temporary folder. Zoo architectures
    convert."""
    import os
    import tempfile

    from pn_tf.export import export_tflite
    from pn_tf.tflite.convert import error_line

    if ctx.model.kind != "model" or os.path.exists(ctx.summary_path("export")):
        return
    with tempfile.TemporaryDirectory(prefix="pn_tf_convertible_") as tmp:
        try:
            export_tflite(deployable(ctx.build_network()), os.path.join(tmp, "model.tflite"))
        except Exception as err:  # any converter failure: the pipeline cannot finish
            raise PipelineError(
                f"--model={ctx.config.model} cannot be converted to TFLite ({error_line(err)}); pn-tf "
                "exports and times the pruned model as TFLite files: replace the layer or op the "
                "converter names") from err


def run(ctx):
    from pn_tf import export as export_lib
    from pn_tf.tflite.runtime import tflite_predict

    c = ctx.config
    out = ctx.stage_dir("export")
    calibration = calibration_batches(ctx)
    images = ctx.images("holdout", 32)
    repair = c.int8_calibration_repair
    pruned = ctx.load_keras(ctx.summary("finetune")["model"])
    artifacts_ = {"pruned": export_lib.export_all(pruned, out, "pruned", calibration, images,
                                                  quantizations=tuple(c.tflite),
                                                  repair_calibration=repair)}
    base = baseline_network(ctx)
    artifacts_["baseline"] = export_lib.export_all(base, out, "baseline", calibration, images,
                                                   quantizations=tuple(q for q in c.tflite if q != "float16"),
                                                   repair_calibration=repair)
    evaluation = ctx.batches(ctx.data.eval_split, 256, take=c.eval_take)
    accuracy = {}
    for who, files in artifacts_.items():
        for kind, info in files.items():
            if kind.startswith("tflite_"):
                accuracy[f"{who}_{kind}"] = export_lib.top1_accuracy(
                    lambda x, p=info["path"]: tflite_predict(p, x), evaluation)
    for files in artifacts_.values():
        for info in files.values():
            info["path"] = ctx.relative(info["path"])
    summary = {"artifacts": artifacts_, "tflite_test_accuracy": accuracy,
               "accuracy_split": ctx.data.eval_split, "int8_calibration_repair": repair}
    if ctx.data.class_names and ctx.is_chief:
        summary["labels"] = ctx.relative(artifacts.write_labels(out, ctx.data.class_names))
    return summary
