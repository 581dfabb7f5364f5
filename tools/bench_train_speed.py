"""Times a training step with Keras's and pn-tf's batch norm, in float32 and mixed precision.

    python tools/bench_train_speed.py --arch=resnet56 --batch_size=128 --json

Four variants of the same zoo network, measured in this process, interleaved round by
round on the same fixed batch (forward + backward + SGD update, the step
``fit_classifier`` runs):

* ``keras_bn/float32``: every BN is ``keras.layers.BatchNormalization`` (Keras 3 computes
  its training step from separate ops), float32 -- what pn-tf did before;
* ``fused_bn/float32``: the zoo as built, with ``pn_tf.layers.batchnorm`` (one fused op);
* ``keras_bn/<precision>`` and ``fused_bn/<precision>``: the same in a mixed policy
  (``--precision``, default mixed_bfloat16), as ``--precision`` trains them.

Prints the median step time of each and its speed-up over ``keras_bn/float32``. On CPUs
the mixed_bfloat16 gain needs AMX or AVX512-BF16 (oneDNN picks the kernels).
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pn_tf  # noqa: E402,F401 -- first, so TensorFlow starts with pn-tf's defaults (oneDNN on)

from absl import app, flags  # noqa: E402

flags.DEFINE_string("arch", "resnet56", "Zoo architecture.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("input_size", None, "Square input side (default: the architecture's).")
flags.DEFINE_enum("precision", "mixed_bfloat16", ["mixed_bfloat16", "mixed_float16"],
                  "Mixed policy compared with float32.")
flags.DEFINE_integer("rounds", 5, "Timed rounds; each round times --steps steps of every variant.")
flags.DEFINE_integer("steps", 4, "Steps per variant per round.")
flags.DEFINE_bool("json", False, "Print one JSON object.")


def keras_batchnorm(model):
    """A copy of ``model`` whose BNs are Keras's own layer (same weights)."""
    import keras

    from pn_tf.training import copy_weights

    def clone(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy_weights(model, copy)
    return copy


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from pn_tf.models import build_model
    from pn_tf.training import TrainConfig, compile_classifier, with_precision

    f = flags.FLAGS
    keras.utils.set_random_seed(0)
    fused = build_model(f.arch, input_size=f.input_size)
    plain = keras_batchnorm(fused)
    size, classes = fused.input.shape[1], fused.output.shape[-1]
    rng = np.random.RandomState(0)
    x = tf.constant(rng.uniform(0, 255, (f.batch_size, size, size, 3)).astype("float32"))
    y = tf.constant(rng.randint(0, classes, f.batch_size).astype("int32"))

    variants = {}
    for bn, model in (("keras_bn", plain), ("fused_bn", fused)):
        for precision in ("float32", f.precision):
            net = model if precision == "float32" else with_precision(model, precision)
            compile_classifier(net, TrainConfig(epochs=1, schedule="constant", precision=precision), 1)
            net.make_train_function()
            variants[f"{bn}/{precision}"] = net

    def step(net):
        start = time.perf_counter()
        logs = net.train_function(iter([(x, y)]))
        float(np.asarray(logs["loss"]))  # wait for the step to finish
        return time.perf_counter() - start

    for net in variants.values():  # tracing and oneDNN kernel creation
        step(net), step(net)
    times = {name: [] for name in variants}
    for _ in range(f.rounds):
        for name, net in variants.items():
            times[name] += [step(net) for _ in range(f.steps)]
    reference = float(np.median(times["keras_bn/float32"]))
    result = {
        "arch": f.arch, "batch_size": f.batch_size, "input_size": int(size),
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "steps_per_variant": f.rounds * f.steps,
        "median_step_ms": {k: round(1e3 * float(np.median(v)), 1) for k, v in times.items()},
        "speedup_vs_keras_bn_float32": {k: round(reference / float(np.median(v)), 2)
                                        for k, v in times.items()},
    }
    if f.json:
        print(json.dumps(result))
        return
    print(f"{f.arch} batch {f.batch_size} at {size}x{size}, {result['steps_per_variant']} steps each "
          f"(TF_ENABLE_ONEDNN_OPTS={result['tf_enable_onednn_opts']}):")
    for name in variants:
        print(f"  {name:28s} {result['median_step_ms'][name]:8.1f} ms/step   "
              f"x{result['speedup_vs_keras_bn_float32'][name]:.2f}")


if __name__ == "__main__":
    app.run(main)
