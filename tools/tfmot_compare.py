"""TF-MOT magnitude pruning of a shipped CIFAR-10 baseline: a row of the comparison table.

TF-MOT (tensorflow-model-optimization) only works with tf_keras (Keras 2), which cannot share
a virtualenv with pn-tf's Keras 3 (see requirements-tfmot.txt), so the comparison runs in
two venvs and the model crosses over as plain data:

1. ``--mode=dump`` (main venv ``.venv``): builds the Keras 3 baseline of ``--arch`` (ResNet-56
   or CIFAR MobileNetV2, with the CIFAR-10 normalisation), loads ``--weights`` (default: the
   one shipped in ``pn_tf/pretrained``) and writes

   * ``<workdir>/baseline_graph.json``: the functional graph as data, read from the model's
     Keras config: every layer with its class and the config keys that define its function
     (no initialisers), and every call of a layer in execution order with the (layer, node)
     outputs it consumes (a gate shared by two convolutions has two calls); identity gates
     stay as pass-throughs, any other gate mode or an unsupported layer class stops the dump;
   * ``<workdir>/baseline_weights.npz``: every layer's weights, keyed ``"<layer name>/<index>"``
     (index in the layer's weight order);
   * ``<workdir>/baseline_check.npz``: the first 32 test images and the Keras 3 logits on them.

   A workdir already holding prune results of another baseline is refused (new ``--workdir``).

2. ``--mode=prune`` (TF-MOT venv ``.venv-tfmot``): rebuilds the graph in tf_keras (same layer
   names and connections; ``relu6`` activations become ``ReLU(max_value=6)``, pn-tf's channel
   zero-padding a small tf_keras layer, the gates are left out), loads the ``.npz`` (every
   array must find its place) and checks that the twin's logits equal the Keras 3 ones
   (``--twin_tolerance``, default 1e-4 max abs difference; the run stops otherwise). It exports
   the unpruned twin to ``<workdir>/baseline_f32.tflite`` (and ``baseline_int8.tflite`` with
   ``--int8``), then for every seed of ``--seeds``:

   * one-shot: ``prune_low_magnitude`` with ``ConstantSparsity(--sparsity)`` on every Conv2D
     and Dense layer (TF-MOT leaves depthwise kernels dense), one mask update applied without
     training, ``strip_pruning``, test and held-out accuracy ("before fine-tuning";
     deterministic, so computed once per run and copied into every seed's JSON);
   * fine-tuning: ``prune_low_magnitude`` on the same layers with
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
    # (--arch=mobilenetv2_cifar for the MobileNetV2 baseline)
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
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from pn_tf.io import atomic_path, write_json  # noqa: E402

DATASET = "cifar10"
ARCHS = ("resnet56", "mobilenetv2_cifar")
CHECK_IMAGES = 32
GRAPH_FILE = "baseline_graph.json"
BASELINE_RESULTS = "baseline.json"
SEED_RESULTS = re.compile(r"seed\d+\.json")  # the names seed_results_json gives


def define_flags():
    """The command line (defined only when run as a script, so tests can import this file)."""
    flags.DEFINE_enum("mode", None, ["dump", "prune"],
                      "dump: Keras 3 weights -> npz (main venv); prune: TF-MOT run (.venv-tfmot).")
    flags.DEFINE_string("workdir", "runs/compare_tfmot", "Folder for the npz, JSON and .tflite files.")
    flags.DEFINE_enum("arch", "resnet56", ARCHS, "CIFAR-10 architecture of the baseline (dump).")
    flags.DEFINE_string("weights", "shipped",
                        "Keras 3 .weights.h5 of the baseline, or 'shipped' for pn_tf/pretrained (dump).")
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


def graph_json(workdir):
    return os.path.join(workdir, GRAPH_FILE)


def baseline_results_json(workdir):
    return os.path.join(workdir, BASELINE_RESULTS)


def seed_results_json(workdir, seed):
    return os.path.join(workdir, f"seed{seed}.json")


def cached_results(workdir):
    """The prune-mode result files already in ``workdir`` (baseline and per-seed JSON)."""
    return [name for name in sorted(os.listdir(workdir))
            if name == BASELINE_RESULTS or SEED_RESULTS.fullmatch(name)]


def load_graph(workdir):
    path = graph_json(workdir)
    if not os.path.isfile(path):
        raise ToolError(f"{path} not found: run --mode=dump first, in the main venv "
                        f"(.venv/bin/python tools/tfmot_compare.py --mode=dump --workdir={workdir})")
    with open(path) as f:
        return json.load(f)


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

def build_keras3_baseline(arch, weights):
    """``(model, weights path)``: the Keras 3 baseline with its trained weights loaded."""
    try:
        import keras

        from pn_tf import data as data_lib
        from pn_tf.checkpoints import CheckpointError, load_checked, resolve_weights
        from pn_tf.models import build_model
    except ImportError as err:
        raise ToolError(f"--mode=dump needs the main venv with Keras 3 and pn_tf (.venv): {err}")
    if not keras.__version__.startswith("3."):
        raise ToolError(f"--mode=dump needs Keras 3 (the main venv .venv), got {keras.__version__}")
    try:
        path = resolve_weights(weights or "shipped", arch, DATASET, flag="weights")
    except CheckpointError as err:
        raise ToolError(str(err)) from None
    model = build_model(arch, input_size=32, num_classes=10, **data_lib.normalization_kwargs(DATASET))
    return load_checked(model, path), path


def layer_arrays(model):
    """``{"<layer>/<i>": weight i}`` for every layer but the (identity) gates."""
    return {f"{layer.name}/{index}": np.asarray(value)
            for layer in model.layers if type(layer).__name__ != "ChannelGate"
            for index, value in enumerate(layer.get_weights())}


def refuse_other_baseline(workdir, arch, source):
    """Prune mode caches results per workdir (baseline.json, seed<s>.json): dumping another
    baseline over them would pair old results with new weights, so that is refused."""
    if not os.path.isfile(graph_json(workdir)):
        return
    old = load_graph(workdir)
    results = cached_results(workdir)
    if results and (old.get("arch"), old.get("source")) != (arch, source):
        raise ToolError(f"{workdir} holds results ({', '.join(results)}) of {old.get('arch')} "
                        f"from {old.get('source')}; dump {arch} from {source} into a new --workdir")


def dump(workdir, arch, weights, data_dir):
    model, path = build_keras3_baseline(arch, weights)
    source = os.path.abspath(path)
    refuse_other_baseline(workdir, arch, source)
    spec = graph_spec(model)
    spec.update(arch=arch, source=source)
    images = test_images(data_dir, CHECK_IMAGES)
    logits = np.asarray(model(images, training=False))
    save_npz(weights_npz(workdir), layer_arrays(model))
    save_npz(check_npz(workdir), {"images": images, "logits": logits})
    write_json(graph_json(workdir), spec)
    print(json.dumps({"weights_npz": weights_npz(workdir), "check_npz": check_npz(workdir),
                      "graph_json": graph_json(workdir), "arch": arch, "source": spec["source"],
                      "layers": len(model.layers)}))


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


# Config keys carried from a Keras 3 layer to its tf_keras twin, per class (initialisers and
# regularisers are dropped: the twin is loaded with the trained weights).
TWIN_KEYS = {
    "Normalization": ("axis", "mean", "variance"),
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "groups",
               "activation", "use_bias"),
    "DepthwiseConv2D": ("kernel_size", "strides", "padding", "depth_multiplier",
                        "dilation_rate", "activation", "use_bias"),
    "BatchNormalization": ("axis", "momentum", "epsilon", "center", "scale"),
    "Activation": ("activation",),
    "ReLU": ("max_value", "negative_slope", "threshold"),
    "Add": (),
    "ZeroPadding2D": ("padding",),
    "MaxPooling2D": ("pool_size", "strides", "padding"),
    "AveragePooling2D": ("pool_size", "strides", "padding"),
    "GlobalAveragePooling2D": ("keepdims",),
    "Dense": ("units", "activation", "use_bias"),
    "ChannelZeroPad": ("before", "after"),
}
# Activations tf_keras has no name for, as the equivalent tf_keras layer.
TWIN_ACTIVATION_LAYERS = {"relu6": ("ReLU", {"max_value": 6.0})}


def _history_refs(node):
    """``[layer name, node index]`` of every tensor a Keras 3 ``inbound_nodes`` entry consumes."""
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__":
            name, node_index, _ = node["config"]["keras_history"]
            return [[name, node_index]]
        return [ref for value in node.values() for ref in _history_refs(value)]
    if isinstance(node, (list, tuple)):
        return [ref for value in node for ref in _history_refs(value)]
    return []


def graph_spec(model):
    """A Keras 3 functional model as plain data: its layers (class, the config that defines
    the function) and its calls in execution order (layer, node index, input tensors).

    A layer called more than once (pn-tf shares one gate between the convolutions it masks)
    has one call per node. Identity ChannelGates (a baseline's gates) stay as pass-throughs so
    that names line up; any other gate mode is refused, as the twin would compute another
    function.
    """
    config = model.get_config()
    layers, calls = [], []
    for entry in config["layers"]:
        cls, cfg, name = entry["class_name"], entry["config"], entry["name"]
        if cls == "InputLayer":
            spec = {"shape": list(cfg["batch_shape"][1:])}
        elif cls == "ChannelGate":
            if cfg.get("mode", "identity") != "identity":
                raise ToolError(f"{name} is in mode {cfg.get('mode')!r}; the twin assumes "
                                "identity gates")
            spec = {}
        elif cls in TWIN_KEYS:
            spec = {key: cfg[key] for key in TWIN_KEYS[cls] if key in cfg}
        else:
            raise ToolError(f"layer {name} of class {cls} has no tf_keras twin; "
                            f"supported: {sorted(TWIN_KEYS) + ['ChannelGate', 'InputLayer']}")
        layers.append({"name": name, "class": cls, "config": spec})
        calls += [{"layer": name, "node": index, "inputs": _history_refs(node)}
                  for index, node in enumerate(entry["inbound_nodes"])]
    heads = config["output_layers"]  # ["name", 0, 0] or a list of them
    heads = [heads] if isinstance(heads[0], str) else heads
    inputs = [layer["name"] for layer in layers if layer["class"] == "InputLayer"]
    return {"name": model.name, "layers": layers, "calls": execution_order(calls, inputs),
            "inputs": inputs, "outputs": [[name, node] for name, node, _ in heads]}


def execution_order(calls, inputs):
    """``calls`` reordered so that each comes after the calls producing its inputs (the Keras
    config lists layers in creation order, which need not be an execution order); stable."""
    done, ordered, pending = {(name, 0) for name in inputs}, [], list(calls)
    while pending:
        ready = [c for c in pending if all(tuple(ref) in done for ref in c["inputs"])]
        if not ready:
            raise ToolError(f"the graph has a cycle or a dangling input at "
                            f"{[c['layer'] for c in pending][:4]}")
        ordered += ready
        done.update((c["layer"], c["node"]) for c in ready)
        pending = [c for c in pending if (c["layer"], c["node"]) not in done]
    return ordered


def twin_layer(keras, layer):
    """The tf_keras layer of one ``graph_spec`` entry, named as in Keras 3."""
    cls, cfg, name = layer["class"], dict(layer["config"]), layer["name"]
    if cls == "Activation" and cfg["activation"] in TWIN_ACTIVATION_LAYERS:
        cls, cfg = TWIN_ACTIVATION_LAYERS[cfg["activation"]]
    if cls == "ChannelZeroPad":
        return channel_zero_pad_class(keras)(name=name, **cfg)
    return getattr(keras.layers, cls)(name=name, **cfg)


def build_twin(keras, spec):
    """The tf_keras model of a ``graph_spec``: the same layers, names and connections, gates
    (identity) left out."""
    layers = {layer["name"]: layer for layer in spec["layers"]}
    tensors = {(name, 0): keras.Input(tuple(layers[name]["config"]["shape"]), name=name)
               for name in spec["inputs"]}
    built = {}
    for call in spec["calls"]:
        layer = layers[call["layer"]]
        args = [tensors[tuple(ref)] for ref in call["inputs"]]
        if layer["class"] == "ChannelGate":
            out = args[0]
        else:
            if layer["name"] not in built:
                built[layer["name"]] = twin_layer(keras, layer)
            out = built[layer["name"]](args if len(args) > 1 else args[0])
        tensors[(call["layer"], call["node"])] = out
    inputs = [tensors[(name, 0)] for name in spec["inputs"]]
    outputs = [tensors[tuple(ref)] for ref in spec["outputs"]]
    return keras.Model(inputs if len(inputs) > 1 else inputs[0],
                       outputs if len(outputs) > 1 else outputs[0], name=spec["name"])


def load_twin(keras, arrays, spec):
    """A fresh twin of ``spec`` holding the dumped weights; every array must be used exactly."""
    model = build_twin(keras, spec)
    used = set()
    for layer in model.layers:
        count = len(layer.weights)
        keys = [f"{layer.name}/{i}" for i in range(count)]
        missing = [k for k in keys if k not in arrays]
        if missing or f"{layer.name}/{count}" in arrays:
            raise ToolError(f"{layer.name}: the npz does not hold exactly {count} weights "
                            f"(missing {missing}); were the npz and {GRAPH_FILE} dumped together?")
        values = [arrays[k] for k in keys]
        for key, var, value in zip(keys, layer.weights, values):
            if tuple(var.shape) != value.shape:
                raise ToolError(f"{key}: twin shape {tuple(var.shape)} != dumped {value.shape}")
        if values:
            layer.set_weights(values)
        used.update(keys)
    unused = sorted(k for k in arrays if k not in used)
    if unused:
        raise ToolError(f"dumped weights the twin has no place for: {unused[:8]}")
    return model


def check_twin(model, check, tolerance):
    """Max abs logit difference against Keras 3 on the dumped images; raises above ``tolerance``."""
    logits = np.asarray(model(check["images"], training=False))
    diff = float(np.max(np.abs(logits - check["logits"])))
    if not diff <= tolerance:
        raise ToolError(f"the tf_keras twin does not reproduce the Keras 3 baseline: max abs logit "
                        f"difference {diff:.3g} > {tolerance:g} on {len(logits)} test images")
    return diff


# --- pruning ------------------------------------------------------------------------------------

def prunable(layer, keras):
    """Conv2D and Dense: the layers whose kernels TF-MOT prunes (its registry lists
    DepthwiseConv2D with no prunable weights, so depthwise kernels stay dense)."""
    return isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))


def wrap_prunable(model, keras, tfmot, schedule):
    """``model`` with ``prune_low_magnitude`` around every prunable layer."""
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
    """Per-layer kernel sparsity of the prunable layers; raises if one misses ``target``."""
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
    from pn_tf.tflite.runtime import load_interpreter, run_interpreter

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

def baseline_summary(tf, keras, twin, check, datasets, calibration, workdir):
    """Twin check, twin accuracy and the unpruned TFLite exports (cached in baseline.json).

    ``twin()`` builds a fresh tf_keras twin holding the baseline weights.
    """
    path = baseline_results_json(workdir)
    model = twin()
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


def before_finetune(keras, tfmot, twin, datasets):
    """Accuracy and sparsity of one-shot magnitude pruning (no training)."""
    one_shot = one_shot_prune(twin(), keras, tfmot, FLAGS.sparsity)
    sparsity = layer_sparsity(one_shot, keras, FLAGS.sparsity, FLAGS.sparsity_tolerance)
    return {**evaluate(one_shot, keras, datasets), "sparsity": sparsity["overall"]}


def run_seed(seed, tf, keras, tfmot, twin, datasets, calibration, workdir, before, arch):
    from pn_tf import data as data_lib

    start = time.time()
    train = data_lib.make_dataset(DATASET, "train_main", FLAGS.batch_size, training=True,
                                  data_dir=FLAGS.data_dir, seed=seed, take=FLAGS.take)
    steps_per_epoch = int(train.cardinality())
    train_start = time.time()
    pruned, history = fine_tune(twin(), keras, tfmot, train, steps_per_epoch,
                                seed)
    train_seconds = time.time() - train_start
    sparsity = layer_sparsity(pruned, keras, FLAGS.sparsity, FLAGS.sparsity_tolerance)
    after = evaluate(pruned, keras, datasets)
    tflite = export_all(tf, pruned, os.path.join(workdir, f"seed{seed}"), calibration,
                        datasets["test"])
    return {
        "method": "tfmot_magnitude", "arch": arch, "dataset": DATASET, "seed": seed,
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
    from pn_tf.tflite.calibration import representative_dataset

    arrays = load_npz(weights_npz(workdir))
    check = load_npz(check_npz(workdir))
    spec = load_graph(workdir)

    def twin():
        return load_twin(keras, arrays, spec)

    datasets = eval_datasets(FLAGS.data_dir)
    calibration = representative_dataset(DATASET, num_images=FLAGS.calibration_images,
                                          batch_size=32, data_dir=FLAGS.data_dir)
    base = baseline_summary(tf, keras, twin, check, datasets, calibration, workdir)
    print(json.dumps({"baseline": base}), flush=True)
    before = None
    for seed in [int(s) for s in FLAGS.seeds]:
        path = seed_results_json(workdir, seed)
        if os.path.exists(path):
            with open(path) as f:
                summary = json.load(f)
            print(f"[tfmot_compare] seed {seed}: already done ({path})", file=sys.stderr)
        else:
            before = before or before_finetune(keras, tfmot, twin, datasets)
            summary = run_seed(seed, tf, keras, tfmot, twin, datasets, calibration, workdir,
                               before, spec["arch"])
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
            dump(workdir, FLAGS.arch, FLAGS.weights, FLAGS.data_dir)
        else:
            prune(workdir)
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
