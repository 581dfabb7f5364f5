"""TF-MOT magnitude pruning of the shipped ResNet-56 on CIFAR-10: a row of the comparison table.

TF-MOT (tensorflow-model-optimization) only works with tf_keras (Keras 2), which cannot share
a virtualenv with pn-tf's Keras 3 (see requirements-tfmot.txt), so the comparison runs in
two venvs and the weights cross over as a plain ``.npz``:

1. ``--mode=dump`` (main venv ``.venv``): builds the Keras 3 baseline
   (``pn_tf.models.build_model("resnet56")`` with the CIFAR-10 normalisation), loads the shipped
   weights ``pn_tf/pretrained/resnet56_cifar10.weights.h5`` and writes

   * ``<workdir>/baseline_weights.npz``: every layer's weights, keyed ``"<layer name>/<index>"``
     (index in the layer's weight order), plus the Normalization layer's constant mean/variance;
   * ``<workdir>/baseline_check.npz``: the first 32 test images, the Keras 3 logits on them and
     the model's (layer name, layer class) list, for the twin check.

2. ``--mode=prune`` (TF-MOT venv ``.venv-tfmot``): builds a tf_keras twin of ResNet-56 (same
   layer names and ops: Normalization in the model, conv/BN/ReLU, option-A shortcut by a 1x1
   stride-2 max pool and channel zero-padding; the baseline's gates are identity and are left
   out), loads the ``.npz`` and checks that the twin's logits equal the Keras 3 ones
   (``--twin_tolerance``, default 1e-4 max abs difference; the run stops otherwise). It exports
   the unpruned twin to ``<workdir>/baseline_f32.tflite`` (and ``baseline_int8.tflite`` with
   ``--int8``), then for every seed of ``--seeds``:

   * one-shot: ``prune_low_magnitude`` with ``ConstantSparsity(--sparsity)`` on every Conv2D and
     Dense layer, one mask update applied without training, ``strip_pruning``, test and
     held-out accuracy ("before fine-tuning"; deterministic, so computed once per run and
     copied into every seed's JSON);
   * fine-tuning: ``prune_low_magnitude`` on every Conv2D and Dense layer with
     ``PolynomialDecay`` sparsity 0 -> ``--sparsity`` (end step at ``--end_step_fraction`` of
     training rounded to a multiple of ``--pruning_frequency``, the steps between mask
     updates) and ``UpdatePruningStep``, trained ``--epochs`` on ``train_main`` at batch 128
     with pn-tf's fine-tuning recipe: SGD momentum 0.9, peak lr 0.02, linear warm-up over
     min(1, epochs / 2) epochs then cosine decay to 0 (as
     ``pn_tf.training.learning_rate_schedule``), decoupled weight decay
     ``--weight_decay / (1 - momentum)`` = 1e-3 (as ``pn_tf.training.keras_weight_decay``),
     the same ``pn_tf.data`` pipeline, augmentation and seed;
   * ``strip_pruning``, per-layer sparsity check, test and held-out accuracy, TFLite float32
     (``TFLiteConverter.from_keras_model``) and with ``--int8`` full-integer int8 (float I/O,
     calibrated on 256 unaugmented training images), their sizes raw and gzip-compressed
     (magnitude pruning makes the file compressible, not smaller) and their TFLite test
     accuracy;
   * ``<workdir>/seed<s>.json`` and ``seed<s>_f32.tflite`` / ``seed<s>_int8.tflite``; one JSON
     line per seed on stdout. A seed whose JSON exists is not run again.

3. Latency, in the main venv, with the existing benchmark (``tools/bench_tflite.py``).

Commands (from the repository root; CIFAR-10 must be prepared in the TFDS data dir)::

    export TFDS_DATA_DIR=/path/to/tensorflow_datasets TF_CPP_MIN_LOG_LEVEL=2
    python3 -m venv .venv-tfmot && .venv-tfmot/bin/pip install -r requirements-tfmot.txt
    .venv/bin/python tools/tfmot_compare.py --mode=dump --workdir=runs/compare_tfmot
    .venv-tfmot/bin/python tools/tfmot_compare.py --mode=prune --workdir=runs/compare_tfmot \\
        --seeds=0,1 --epochs=1 --sparsity=0.5 --int8
    .venv/bin/python tools/bench_tflite.py --num_threads=1 --runs=300 \\
        --models=runs/compare_tfmot/baseline_f32.tflite,runs/compare_tfmot/seed0_f32.tflite

``--take`` / ``--eval_take`` limit the training / evaluation images (smoke runs only).
Exit status: 0 on success, 1 on an error (printed as ``error: ...``).
"""

import gzip
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from pn_tf.io import atomic_path, write_json  # noqa: E402

DATASET = "cifar10"
ARCH = "resnet56"
STAGE_WIDTHS = (16, 32, 64)
BLOCKS_PER_STAGE = 9
CHECK_IMAGES = 32
DEFAULT_WEIGHTS = os.path.join(REPO, "pn_tf", "pretrained", "resnet56_cifar10.weights.h5")

flags.DEFINE_enum("mode", None, ["dump", "prune"],
                  "dump: Keras 3 weights -> npz (main venv); prune: TF-MOT run (.venv-tfmot).")
flags.DEFINE_string("workdir", "runs/compare_tfmot", "Folder for the npz, JSON and .tflite files.")
flags.DEFINE_string("weights", DEFAULT_WEIGHTS, "Keras 3 .weights.h5 of the baseline (dump).")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR).")
flags.DEFINE_list("seeds", ["0", "1"], "Fine-tuning seeds.")
flags.DEFINE_float("sparsity", 0.5, "Target weight sparsity of every Conv2D and Dense kernel.")
flags.DEFINE_integer("epochs", 1, "Fine-tuning epochs.")
flags.DEFINE_integer("batch_size", 128, "Fine-tuning batch size.")
flags.DEFINE_float("lr", 0.02, "Peak learning rate.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 1e-4,
                   "PyTorch-style L2 coefficient; SGD gets the decoupled wd / (1 - momentum).")
flags.DEFINE_float("end_step_fraction", 2 / 3, "PolynomialDecay end step, as a share of training.")
flags.DEFINE_integer("pruning_frequency", 10, "Steps between mask updates while fine-tuning.")
flags.DEFINE_bool("int8", False, "Also export full-integer int8 TFLite files.")
flags.DEFINE_integer("calibration_images", 256, "Training images calibrating int8.")
flags.DEFINE_float("twin_tolerance", 1e-4, "Max abs logit difference allowed between the models.")
flags.DEFINE_float("sparsity_tolerance", 0.01, "Allowed |achieved - target| sparsity per layer.")
flags.DEFINE_integer("tflite_threads", 2, "Interpreter threads for the TFLite accuracy runs.")
flags.DEFINE_integer("take", None, "Use only this many training images (smoke runs).")
flags.DEFINE_integer("eval_take", None, "Use only this many held-out/test images (smoke runs).")
flags.mark_flag_as_required("mode")

FLAGS = flags.FLAGS


class ToolError(RuntimeError):
    """A problem the user can fix (wrong venv, missing file, failed check)."""


def weights_npz(workdir):
    return os.path.join(workdir, "baseline_weights.npz")


def check_npz(workdir):
    return os.path.join(workdir, "baseline_check.npz")


def save_npz(path, arrays):
    """``np.savez`` to a temporary sibling, renamed into place when complete."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_npz(path):
    if not os.path.isfile(path):
        raise ToolError(f"{path} not found: run --mode=dump first, in the main venv "
                        f"(.venv/bin/python tools/tfmot_compare.py --mode=dump "
                        f"--workdir={os.path.dirname(path)})")
    with np.load(path) as content:
        return {key: content[key] for key in content.files}


def test_images(data_dir, count):
    """The first ``count`` CIFAR-10 test images (unaugmented) as a float32 array."""
    from pn_tf import data as data_lib

    images, _ = next(iter(data_lib.make_dataset(DATASET, "test", count, training=False,
                                                data_dir=data_dir, take=count)))
    return images.numpy()


# --- dump (Keras 3, main venv) ------------------------------------------------------------------

def build_keras3_baseline(weights):
    try:
        import keras

        from pn_tf import data as data_lib
        from pn_tf.baseline import load_checked
        from pn_tf.models import build_model
    except ImportError as err:
        raise ToolError(f"--mode=dump needs the main venv with Keras 3 and pn_tf (.venv): {err}")
    if not keras.__version__.startswith("3."):
        raise ToolError(f"--mode=dump needs Keras 3 (the main venv .venv), got {keras.__version__}")
    if not os.path.isfile(weights):
        raise ToolError(f"--weights={weights}: no such file")
    model = build_model(ARCH, input_size=32, num_classes=10, **data_lib.normalization_kwargs(DATASET))
    return load_checked(model, weights)


def layer_arrays(model):
    """``{"<layer>/<i>": weight i}`` for every layer, plus the Normalization constants."""
    arrays = {}
    for layer in model.layers:
        for index, value in enumerate(layer.get_weights()):
            arrays[f"{layer.name}/{index}"] = np.asarray(value)
        if type(layer).__name__ == "Normalization":
            arrays[f"{layer.name}/mean"] = np.asarray(layer.mean, np.float32)
            arrays[f"{layer.name}/variance"] = np.asarray(layer.variance, np.float32)
        if type(layer).__name__ == "ChannelGate" and layer.mode != "identity":
            raise ToolError(f"{layer.name} is in mode {layer.mode!r}; the twin assumes "
                            "identity gates")
    return arrays


def dump(workdir, weights, data_dir):
    model = build_keras3_baseline(weights)
    images = test_images(data_dir, CHECK_IMAGES)
    logits = np.asarray(model(images, training=False))
    save_npz(weights_npz(workdir), layer_arrays(model))
    save_npz(check_npz(workdir), {
        "images": images, "logits": logits,
        "layer_names": np.array([layer.name for layer in model.layers]),
        "layer_classes": np.array([type(layer).__name__ for layer in model.layers]),
    })
    print(json.dumps({"weights_npz": weights_npz(workdir), "check_npz": check_npz(workdir),
                      "source": os.path.abspath(weights), "layers": len(model.layers)}))


# --- the tf_keras twin (.venv-tfmot) ------------------------------------------------------------

def import_tfmot():
    """``(tensorflow, tf_keras, tfmot)`` with tf.keras pointing at Keras 2."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    try:
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as err:
        raise ToolError(
            f"--mode=prune needs the TF-MOT venv .venv-tfmot ({err}); create it with "
            "`python3 -m venv .venv-tfmot && "
            ".venv-tfmot/bin/pip install -r requirements-tfmot.txt` "
            "and run this tool with .venv-tfmot/bin/python") from None
    return tf, tf_keras, tfmot


_ZERO_PAD_CLASS = {}


def channel_zero_pad_class(keras):
    """A tf_keras layer appending zero channels (the twin of pn_tf's ChannelZeroPad)."""
    if "cls" not in _ZERO_PAD_CLASS:
        import tensorflow as tf

        class ChannelZeroPad(keras.layers.Layer):
            def __init__(self, before, after, **kwargs):
                super().__init__(**kwargs)
                self.before, self.after = int(before), int(after)

            def call(self, inputs):
                return tf.pad(inputs, [[0, 0], [0, 0], [0, 0], [self.before, self.after]])

            def get_config(self):
                return {**super().get_config(), "before": self.before, "after": self.after}

        _ZERO_PAD_CLASS["cls"] = ChannelZeroPad
    return _ZERO_PAD_CLASS["cls"]


def twin_conv_bn(keras, x, filters, strides, name, relu=True):
    """3x3 conv (no bias, torch-style symmetric padding when strided) -> BN -> ReLU."""
    padding = "same"
    if strides > 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding=padding, use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def twin_block(keras, x, width, strides, name):
    shortcut = x
    y = twin_conv_bn(keras, x, width, strides, f"{name}_1")
    y = twin_conv_bn(keras, y, width, 1, f"{name}_2", relu=False)
    in_width = x.shape[-1]
    if strides > 1 or in_width != width:
        if strides > 1:
            shortcut = keras.layers.MaxPooling2D(1, strides, name=f"{name}_subsample")(shortcut)
        extra = width - in_width
        shortcut = channel_zero_pad_class(keras)(extra // 2, extra - extra // 2,
                                                 name=f"{name}_pad_channels")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def build_twin(keras, mean, variance):
    """ResNet-56 in tf_keras with the layer names of ``pn_tf.models.resnet_cifar``, no gates."""
    inputs = keras.Input((32, 32, 3), name=f"{ARCH}_input")
    x = keras.layers.Normalization(mean=list(mean), variance=list(variance),
                                   name="normalize")(inputs)
    x = twin_conv_bn(keras, x, STAGE_WIDTHS[0], 1, "stem")
    for stage, width in enumerate(STAGE_WIDTHS):
        for block in range(BLOCKS_PER_STAGE):
            strides = 2 if stage > 0 and block == 0 else 1
            x = twin_block(keras, x, width, strides, f"stage{stage + 1}_block{block + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(10, name="classifier")(x)
    return keras.Model(inputs, outputs, name=ARCH)


def load_twin(keras, arrays):
    """A fresh twin holding the dumped weights; every non-gate array must be used exactly."""
    model = build_twin(keras, arrays["normalize/mean"].reshape(-1),
                       arrays["normalize/variance"].reshape(-1))
    used = {"normalize/mean", "normalize/variance"}
    for layer in model.layers:
        count = len(layer.weights)
        keys = [f"{layer.name}/{i}" for i in range(count)]
        missing = [k for k in keys if k not in arrays]
        if missing or f"{layer.name}/{count}" in arrays:
            raise ToolError(f"{layer.name}: the npz does not hold exactly {count} weights "
                            f"(missing {missing}); was it dumped from {ARCH}?")
        values = [arrays[k] for k in keys]
        for key, var, value in zip(keys, layer.weights, values):
            if tuple(var.shape) != value.shape:
                raise ToolError(f"{key}: twin shape {tuple(var.shape)} != dumped {value.shape}")
        if values:
            layer.set_weights(values)
        used.update(keys)
    unused = sorted(k for k in arrays if k not in used and not k.split("/")[0].endswith("_gate"))
    if unused:
        raise ToolError(f"dumped weights the twin has no place for: {unused[:8]}")
    return model


def check_twin(model, check, tolerance):
    """Max abs logit difference against Keras 3; raises if above ``tolerance`` or layers differ."""
    dumped = {(n, c) for n, c in zip(check["layer_names"].tolist(), check["layer_classes"].tolist())
              if c != "ChannelGate"}
    twin = {(layer.name, type(layer).__name__) for layer in model.layers}
    if dumped != twin:
        raise ToolError(f"twin layers differ from the Keras 3 model: only in Keras 3 "
                        f"{sorted(dumped - twin)[:6]}, only in the twin "
                        f"{sorted(twin - dumped)[:6]}")
    logits = np.asarray(model(check["images"], training=False))
    diff = float(np.max(np.abs(logits - check["logits"])))
    if not diff <= tolerance:
        raise ToolError(f"the tf_keras twin does not reproduce the Keras 3 baseline: max abs logit "
                        f"difference {diff:.3g} > {tolerance:g} on {len(logits)} test images")
    return diff


# --- pruning ------------------------------------------------------------------------------------

def prunable(layer, keras):
    return isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))


def wrap_prunable(model, keras, tfmot, schedule):
    """``model`` with ``prune_low_magnitude`` around every Conv2D and Dense layer."""
    sparsity = tfmot.sparsity.keras

    def wrap(layer):
        if prunable(layer, keras):
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return keras.models.clone_model(model, clone_function=wrap)


def wrappers(model):
    """The model's PruneLowMagnitude layers (the class is not in TF-MOT's public API)."""
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
        PruneLowMagnitude)

    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


def one_shot_prune(model, keras, tfmot, target):
    """Magnitude pruning at ``target`` in one mask update (TF-MOT's own ops), stripped."""
    schedule = tfmot.sparsity.keras.ConstantSparsity(target, begin_step=0, frequency=1)
    wrapped = wrap_prunable(model, keras, tfmot, schedule)
    for layer in wrappers(wrapped):
        layer.pruning_step.assign(0)
        layer.pruning_obj.conditional_mask_update()
        layer.pruning_obj.weight_mask_op()
    return tfmot.sparsity.keras.strip_pruning(wrapped)


def layer_sparsity(model, keras, target, tolerance):
    """Per-layer kernel sparsity of the Conv2D/Dense layers; raises if one misses ``target``."""
    per_layer, zeros, total = {}, 0, 0
    for layer in model.layers:
        if prunable(layer, keras):
            kernel = layer.kernel.numpy()
            per_layer[layer.name] = float(np.mean(kernel == 0))
            zeros += int(np.sum(kernel == 0))
            total += kernel.size
    bad = {n: s for n, s in per_layer.items() if abs(s - target) > tolerance}
    if bad:
        raise ToolError(f"sparsity misses the target {target} by more than {tolerance} in: {bad}")
    values = list(per_layer.values())
    return {"overall": zeros / total, "min": min(values), "max": max(values),
            "layers": len(values), "pruned_weights": zeros, "prunable_weights": total,
            "per_layer": per_layer}


def all_weights_count(model):
    return int(sum(np.prod(w.shape) for w in model.weights))


# --- training -----------------------------------------------------------------------------------

def learning_rate(keras, epochs, steps_per_epoch, peak):
    """pn-tf's cosine recipe (a tf_keras schedule): warm-up, then cosine to 0."""
    from pn_tf.training import cosine_warmup_epochs

    total = epochs * steps_per_epoch
    warmup = int(round(cosine_warmup_epochs(epochs) * steps_per_epoch))
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else peak, max(1, total - warmup), alpha=0.0,
        warmup_target=peak if warmup else None, warmup_steps=warmup)


def compile_classifier(model, keras, optimizer="sgd"):
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def fine_tune(model, keras, tfmot, train, steps_per_epoch, seed):
    """TF-MOT gradual magnitude pruning during ``--epochs`` of fine-tuning; returns it stripped."""
    total = FLAGS.epochs * steps_per_epoch
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=FLAGS.sparsity, begin_step=0,
        end_step=pruning_end_step(total), frequency=FLAGS.pruning_frequency)
    keras.utils.set_random_seed(seed)
    wrapped = wrap_prunable(model, keras, tfmot, schedule)
    optimizer = keras.optimizers.SGD(
        learning_rate(keras, FLAGS.epochs, steps_per_epoch, FLAGS.lr), momentum=FLAGS.momentum,
        nesterov=False, weight_decay=decoupled_weight_decay())
    compile_classifier(wrapped, keras, optimizer)
    history = wrapped.fit(train, epochs=FLAGS.epochs, verbose=2,
                          callbacks=[tfmot.sparsity.keras.UpdatePruningStep(),
                                     keras.callbacks.TerminateOnNaN()])
    losses = history.history.get("loss", [])
    if len(losses) != FLAGS.epochs or not np.all(np.isfinite(losses)):
        raise ToolError(f"fine-tuning seed {seed} did not finish with a finite loss: {losses}")
    return tfmot.sparsity.keras.strip_pruning(wrapped), history.history


def pruning_end_step(total_steps):
    """``--end_step_fraction`` of training, rounded to a multiple of the mask-update frequency.

    TF-MOT updates masks only at steps ``k * frequency`` up to ``end_step``; on a multiple the
    last update happens at ``end_step`` itself, where PolynomialDecay reaches the target.
    """
    freq = FLAGS.pruning_frequency
    return freq * max(1, int(round(FLAGS.end_step_fraction * total_steps / freq)))


def decoupled_weight_decay():
    from pn_tf.training import keras_weight_decay

    return keras_weight_decay(FLAGS.weight_decay, FLAGS.momentum)


# --- evaluation and export ----------------------------------------------------------------------

def eval_datasets(data_dir):
    from pn_tf import data as data_lib

    return {split: data_lib.make_dataset(DATASET, split, 256, training=False, data_dir=data_dir,
                                         take=FLAGS.eval_take)
            for split in ("test", "holdout")}


def evaluate(model, keras, datasets):
    compile_classifier(model, keras)
    return {f"{split}_accuracy": float(model.evaluate(ds, verbose=0, return_dict=True)["accuracy"])
            for split, ds in datasets.items()}


def tflite_bytes(tf, model, quantization, calibration=None):
    """TFLite flatbuffer of a tf_keras model: plain float32, or full-integer int8 (float I/O)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization == "int8":
        def representative():
            for images, _ in calibration:
                yield [images.numpy()]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def write_tflite(path, content):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(content)
    return {"path": path, "bytes": len(content), "gzip_bytes": len(gzip.compress(content, 9))}


def tflite_accuracy(path, dataset, threads):
    from pn_tf.export import load_interpreter, run_interpreter

    interpreter = load_interpreter(path, threads)
    correct = count = 0
    for images, labels in dataset:
        logits = run_interpreter(interpreter, images.numpy(), batch_size=len(images))
        correct += int(np.sum(np.argmax(logits, axis=1) == labels.numpy()))
        count += len(labels)
    return correct / count


def export_all(tf, model, prefix, calibration, test_ds):
    """``<prefix>_f32.tflite`` (and int8): sizes raw/gzip and TFLite test accuracy."""
    result = {}
    quantizations = ["float32", "int8"] if FLAGS.int8 else ["float32"]
    for quantization in quantizations:
        suffix = "f32" if quantization == "float32" else "int8"
        entry = write_tflite(f"{prefix}_{suffix}.tflite",
                             tflite_bytes(tf, model, quantization, calibration))
        entry["test_accuracy"] = tflite_accuracy(entry["path"], test_ds, FLAGS.tflite_threads)
        result[quantization] = entry
    return result


# --- prune mode ---------------------------------------------------------------------------------

def baseline_summary(tf, keras, arrays, check, datasets, calibration, workdir):
    """Twin check, twin accuracy and the unpruned TFLite exports (cached in baseline.json)."""
    path = os.path.join(workdir, "baseline.json")
    model = load_twin(keras, arrays)
    diff = check_twin(model, check, FLAGS.twin_tolerance)
    if os.path.exists(path):
        with open(path) as f:
            summary = json.load(f)
        if summary.get("int8") == FLAGS.int8 and summary.get("eval_take") == FLAGS.eval_take:
            summary["twin_max_abs_diff"] = diff
            return summary
    summary = {"twin_max_abs_diff": diff, "int8": FLAGS.int8, "eval_take": FLAGS.eval_take,
               "weights": all_weights_count(model), **evaluate(model, keras, datasets),
               "tflite": export_all(tf, model, os.path.join(workdir, "baseline"), calibration,
                                    datasets["test"])}
    write_json(path, summary)
    return summary


def before_finetune(keras, tfmot, arrays, datasets):
    """Accuracy and sparsity of one-shot magnitude pruning (no training)."""
    one_shot = one_shot_prune(load_twin(keras, arrays), keras, tfmot, FLAGS.sparsity)
    sparsity = layer_sparsity(one_shot, keras, FLAGS.sparsity, FLAGS.sparsity_tolerance)
    return {**evaluate(one_shot, keras, datasets), "sparsity": sparsity["overall"]}


def run_seed(seed, tf, keras, tfmot, arrays, datasets, calibration, workdir, before):
    from pn_tf import data as data_lib

    start = time.time()
    train = data_lib.make_dataset(DATASET, "train_main", FLAGS.batch_size, training=True,
                                  data_dir=FLAGS.data_dir, seed=seed, take=FLAGS.take)
    steps_per_epoch = int(train.cardinality())
    train_start = time.time()
    pruned, history = fine_tune(load_twin(keras, arrays), keras, tfmot, train, steps_per_epoch,
                                seed)
    train_seconds = time.time() - train_start
    sparsity = layer_sparsity(pruned, keras, FLAGS.sparsity, FLAGS.sparsity_tolerance)
    after = evaluate(pruned, keras, datasets)
    tflite = export_all(tf, pruned, os.path.join(workdir, f"seed{seed}"), calibration,
                        datasets["test"])
    return {
        "method": "tfmot_magnitude", "arch": ARCH, "dataset": DATASET, "seed": seed,
        "target_sparsity": FLAGS.sparsity, "before_finetune": before, "after_finetune": after,
        "sparsity": sparsity, "tflite": tflite, "history": history,
        "recipe": {"epochs": FLAGS.epochs, "batch_size": FLAGS.batch_size,
                   "steps_per_epoch": steps_per_epoch, "peak_lr": FLAGS.lr,
                   "momentum": FLAGS.momentum, "weight_decay_pytorch": FLAGS.weight_decay,
                   "weight_decay_decoupled": decoupled_weight_decay(),
                   "schedule": "linear warm-up min(1, epochs/2) epochs, cosine to 0",
                   "pruning_schedule": "PolynomialDecay 0 -> target",
                   "end_step": pruning_end_step(FLAGS.epochs * steps_per_epoch),
                   "pruning_frequency": FLAGS.pruning_frequency, "train_split": "train_main",
                   "take": FLAGS.take, "eval_take": FLAGS.eval_take},
        "train_seconds": round(train_seconds, 1), "seed_seconds": round(time.time() - start, 1),
    }


def prune(workdir):
    tf, keras, tfmot = import_tfmot()
    from pn_tf.export import representative_dataset

    arrays = load_npz(weights_npz(workdir))
    check = load_npz(check_npz(workdir))
    datasets = eval_datasets(FLAGS.data_dir)
    calibration = representative_dataset(DATASET, num_images=FLAGS.calibration_images,
                                          batch_size=32, data_dir=FLAGS.data_dir)
    base = baseline_summary(tf, keras, arrays, check, datasets, calibration, workdir)
    print(json.dumps({"baseline": base}), flush=True)
    before = None
    for seed in [int(s) for s in FLAGS.seeds]:
        path = os.path.join(workdir, f"seed{seed}.json")
        if os.path.exists(path):
            with open(path) as f:
                summary = json.load(f)
            print(f"[tfmot_compare] seed {seed}: already done ({path})", file=sys.stderr)
        else:
            before = before or before_finetune(keras, tfmot, arrays, datasets)
            summary = run_seed(seed, tf, keras, tfmot, arrays, datasets, calibration, workdir,
                               before)
            summary["baseline"] = {k: base[k] for k in ("test_accuracy", "holdout_accuracy",
                                                        "twin_max_abs_diff", "tflite")}
            write_json(path, summary)
        line = {k: v for k, v in summary.items() if k not in ("history", "baseline")}
        line["sparsity"] = {k: v for k, v in summary["sparsity"].items() if k != "per_layer"}
        print(json.dumps(line, sort_keys=True), flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not 0.0 < FLAGS.sparsity < 1.0:
        raise app.UsageError(f"--sparsity must be in (0, 1), got {FLAGS.sparsity}")
    workdir = os.path.abspath(FLAGS.workdir)
    try:
        if FLAGS.mode == "dump":
            dump(workdir, FLAGS.weights, FLAGS.data_dir)
        else:
            prune(workdir)
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
