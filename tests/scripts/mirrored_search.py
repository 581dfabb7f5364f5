"""Runs two PN search steps on one device and under MirroredStrategy(2 CPUs); prints JSON diffs.

Run as a subprocess: logical devices must be configured before TensorFlow starts.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pn_tf.models import resnet_cifar  # noqa: E402
from pn_tf.search import PNSearch  # noqa: E402


def run(strategy, weights, steps, memory_capacity):
    with strategy.scope():
        network = resnet_cifar(depth=8, input_shape=(16, 16, 3), num_classes=10)
        network.set_weights(weights)
        search = PNSearch(network, predictor="gru", target_reduction=0.5, pn_batch_size=2,
                          memory_capacity=memory_capacity, seed=5)
        search.compile()
        predictor_weights = [np.asarray(w) for w in search.predictor.get_weights()]
    return search, predictor_weights


def main():
    batch, steps = 8, int(sys.argv[1]) if len(sys.argv) > 1 else 6
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (batch * steps, 16, 16, 3)).astype("float32")
    y = rng.randint(0, 10, batch * steps).astype("int32")
    keras.utils.set_random_seed(1)
    weights = resnet_cifar(depth=8, input_shape=(16, 16, 3), num_classes=10).get_weights()

    results = []
    pn_init = None
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        keras.utils.set_random_seed(2)
        search, predictor_weights = run(strategy, weights, steps, memory_capacity=4)
        if pn_init is None:
            pn_init = predictor_weights
        else:
            search.predictor.set_weights(pn_init)
        gates_init = np.concatenate([g.numpy() for g in search.gate_logits])
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
        history = search.fit(ds, epochs=1, verbose=0)
        results.append({
            "gates_init": gates_init,
            "gates": np.concatenate([g.numpy() for g in search.gate_logits]),
            "predictor": np.concatenate([np.ravel(w) for w in search.predictor.get_weights()]),
            "memory": np.concatenate([np.ravel(np.asarray(v)) for v in search.memory.weights]),
            "history": history.history,
            "replicas": strategy.num_replicas_in_sync,
        })
    single, mirrored = results
    print(json.dumps({
        "replicas": [single["replicas"], mirrored["replicas"]],
        "gate_diff": float(np.abs(single["gates"] - mirrored["gates"]).max()),
        "gate_change": float(np.abs(single["gates"] - single["gates_init"]).max()),
        "predictor_diff": float(np.abs(single["predictor"] - mirrored["predictor"]).max()),
        "memory_diff": float(np.abs(single["memory"] - mirrored["memory"]).max()),
        "loss": [single["history"]["loss"][-1], mirrored["history"]["loss"][-1]],
        "pn_mae": [single["history"]["pn_mae"][-1], mirrored["history"]["pn_mae"][-1]],
    }))


if __name__ == "__main__":
    main()
