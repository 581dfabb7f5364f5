"""int8 TFLite accuracy of a model with and without pn-tf's calibration repair, side by side.

    python tools/int8_check.py --model=runs/quickstart/export/pruned.keras --dataset=cifar10
    python tools/int8_check.py --model=runs/x/export/baseline_saved_model --dataset=imagenette --json

Converts ``--model`` (a SavedModel directory or a pn-tf ``.keras`` file) to TFLite float32 and,
twice, to int8 calibrated on the first ``--calibration_images`` training images as the
pipeline does: once repairing the calibration ranges that TFLite widens for in-place ops
(tensorflow/tensorflow#127842; see pn_tf/tflite/calibration.py) and once with the converter's
own ranges. Prints the top-1 accuracy of each file on the test split and the repaired tensors.
Use it to check int8 accuracy before shipping a file, or to see what the repair changes for a
model.

To find where an int8 loss comes from (``pn_tf.int8_debug``):

    python tools/int8_check.py --model=... --dataset=imagenette --weights_only \
        --layer_errors=15 --keep_float=_se_ --keep_float=conv_last

``--weights_only`` adds int8 weights with float activations (dynamic-range quantization): the
part of the loss due to the weights. ``--layer_errors=N`` prints the N ops with the largest own
int8 error (RMS error in int8 steps; rounding alone is 0.29), measured on held-out images.
``--keep_float=REGEX`` (repeatable) adds the int8 model with the ops whose output tensor name
matches left in float (selective quantization).
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402


def define_flags():
    """The command line (defined on demand, so tests can import the module)."""
    flags.DEFINE_string("model", None, "SavedModel directory or pn-tf .keras file.")
    flags.DEFINE_string("dataset", "cifar10", "TFDS dataset the model was trained on.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR).")
    flags.DEFINE_integer("calibration_images", 512, "Training images for int8 calibration.")
    flags.DEFINE_integer("take", None, "Test images to evaluate (default: the whole test split).")
    flags.DEFINE_string("out_dir", None, "Keep the .tflite files here (default: a temp dir).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")
    flags.DEFINE_bool("weights_only", False, "Also int8 weights with float activations.")
    flags.DEFINE_integer("layer_errors", 0, "Also print the N ops with the largest int8 error.")
    flags.DEFINE_multi_string("keep_float", [], "Also the int8 model with the ops whose output "
                              "tensor name matches this regex left in float (repeatable).")
    flags.mark_flag_as_required("model")


FLAGS = flags.FLAGS


def _saved_model(path, tmp):
    """The SavedModel to convert: ``path`` itself, or one exported from a ``.keras`` file."""
    from pn_tf import export

    if os.path.isdir(path):
        return path
    if not path.endswith(".keras") or not os.path.isfile(path):
        raise ValueError(f"--model={path} is neither a SavedModel directory nor a .keras file")
    import keras

    import pn_tf.layers  # noqa: F401  (registers the zoo's layers)

    return export.export_saved_model(keras.saving.load_model(path, compile=False),
                                     os.path.join(tmp, "saved_model"))


def check(model, dataset, out_dir, calibration_images=512, take=None, data_dir=None,
          weights_only=False, layer_errors=0, keep_float=()):
    """``{"float32": acc, "int8_repaired": acc, "int8_unrepaired": acc, "repaired": [...]}``.

    With ``weights_only`` also ``"int8_weights_only"``; with ``keep_float`` (regexes) also
    ``"int8_partly_float"`` and ``"float_nodes"``; with ``layer_errors=N`` also
    ``"layer_errors"`` (the N worst ops, see ``pn_tf.int8_debug.layer_errors``).
    """
    from pn_tf import export, int8_debug
    from pn_tf.data import make_dataset
    from pn_tf.io import save_bytes
    from pn_tf.tflite.calibration import representative_dataset
    from pn_tf.tflite.runtime import input_size, load_interpreter, tflite_predict

    saved_model = _saved_model(model, out_dir)
    paths = {"float32": export.export_tflite(saved_model, os.path.join(out_dir, "float32.tflite"))}
    size = input_size(load_interpreter(paths["float32"]))[0]
    if keep_float:  # a pattern that names no op is refused before the int8 conversions
        int8_debug.float_nodes(saved_model, keep_float, paths["float32"])
    calibration = representative_dataset(dataset, num_images=calibration_images,
                                         image_size=size, data_dir=data_dir)
    repairs = []
    for name, repair in (("int8_repaired", True), ("int8_unrepaired", False)):
        paths[name] = export.export_tflite(saved_model, os.path.join(out_dir, f"{name}.tflite"),
                                           "int8", calibration, repair_calibration=repair,
                                           repairs=repairs if repair else None)
    extra = {}
    if weights_only:
        paths["int8_weights_only"] = save_bytes(
            os.path.join(out_dir, "int8_weights_only.tflite"),
            int8_debug.convert_weights_only(saved_model))
    if keep_float:
        content, extra["float_nodes"] = int8_debug.convert_partly_float(
            saved_model, calibration, keep_float, float_tflite=paths["float32"])
        paths["int8_partly_float"] = save_bytes(
            os.path.join(out_dir, "int8_partly_float.tflite"), content)
    if layer_errors:
        debug = make_dataset(dataset, "holdout", 32, training=False, image_size=size,
                             data_dir=data_dir, take=128)
        extra["layer_errors"] = int8_debug.layer_errors(saved_model, calibration,
                                                        debug)[:layer_errors]
    test = make_dataset(dataset, "test", 256, training=False, image_size=size,
                        data_dir=data_dir, take=take)
    result = {name: export.top1_accuracy(lambda x, p=path: tflite_predict(p, x), test)
              for name, path in paths.items()}
    result["repaired"] = [{"tensor": name, "recorded": list(recorded), "true": list(true)}
                          for name, recorded, true in repairs]
    result["files"] = paths
    result.update(extra)
    return result


def text_report(result):
    """The human-readable form of :func:`check`'s result."""
    from pn_tf.int8_debug import ROUNDING_ERROR

    lines = [f"test top-1  float32 {result['float32']:.4f}  int8 (repaired) "
             f"{result['int8_repaired']:.4f}  int8 (converter's ranges) "
             f"{result['int8_unrepaired']:.4f}"]
    lines.append(f"repaired {len(result['repaired'])} tensors" + "".join(
        f"\n  {r['tensor']}: [{r['recorded'][0]:.3g}, {r['recorded'][1]:.3g}] -> "
        f"[{r['true'][0]:.3g}, {r['true'][1]:.3g}]" for r in result["repaired"][:10]))
    if "int8_weights_only" in result:
        lines.append(f"int8 weights, float activations {result['int8_weights_only']:.4f}")
    if "int8_partly_float" in result:
        lines.append(f"int8 with {len(result['float_nodes'])} ops in float "
                     f"{result['int8_partly_float']:.4f}")
    if "layer_errors" in result:
        lines.append(f"largest own int8 errors (RMS error in int8 steps; rounding alone: "
                     f"{ROUNDING_ERROR:.2f}):")
        lines += [f"  {row['error']:.3f}  {row['op']:<18} {row['tensor'][:100]}"
                  for row in result["layer_errors"]]
    return "\n".join(lines)


def _options():
    return {"weights_only": FLAGS.weights_only, "layer_errors": FLAGS.layer_errors,
            "keep_float": FLAGS.keep_float}


def main(argv):
    del argv
    try:
        if FLAGS.out_dir:
            os.makedirs(FLAGS.out_dir, exist_ok=True)
            result = check(FLAGS.model, FLAGS.dataset, FLAGS.out_dir, FLAGS.calibration_images,
                           FLAGS.take, FLAGS.data_dir, **_options())
        else:
            with tempfile.TemporaryDirectory(prefix="int8_check_") as tmp:
                result = check(FLAGS.model, FLAGS.dataset, tmp, FLAGS.calibration_images,
                               FLAGS.take, FLAGS.data_dir, **_options())
                del result["files"]
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if FLAGS.json:
        print(json.dumps(result, indent=2))
        return 0
    print(text_report(result))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
