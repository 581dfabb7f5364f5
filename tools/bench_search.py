"""Times one PN search step against one ordinary training step of the same network.

    python tools/bench_search.py --arch=resnet56 --batch_size=128 --json

Both are measured in this process, interleaved, on the same fixed batch: the search
step (PNSearch.train_step: soft-gated forward, gate-only backward, projection, memory
push, one PN step) and a plain training step (forward + backward + SGD update of all
weights of the same network with its gates as identity). Prints the medians and
their ratio (goal: <= 1.0).
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
flags.DEFINE_integer("batch_size", 128, "Batch size of both steps.")
flags.DEFINE_integer("input_size", None, "Square input side (default: the architecture's).")
flags.DEFINE_integer("steps", 20, "Timed steps of each kind (after warm-up).")
flags.DEFINE_integer("warmup", 3, "Untimed steps of each kind (tracing).")
flags.DEFINE_string("predictor", "gru", "PN predictor for the search step.")
flags.DEFINE_bool("json", False, "Print one JSON object.")


def _timed(fn, data):
    start = time.perf_counter()
    logs = fn(data)
    float(next(iter(logs.values())))  # wait for the step to finish
    return time.perf_counter() - start


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from pn_tf.layers import gate_layers, set_gate_mode
    from pn_tf.models import build_model
    from pn_tf.search import PNSearch

    f = flags.FLAGS
    keras.utils.set_random_seed(0)
    network = build_model(f.arch, input_size=f.input_size)
    size = network.input.shape[1]
    classes = network.output.shape[-1]
    rng = np.random.RandomState(0)
    x = tf.constant(rng.uniform(0, 255, (f.batch_size, size, size, 3)).astype("float32"))
    y = tf.constant(rng.randint(0, classes, f.batch_size).astype("int32"))

    plain = build_model(f.arch, input_size=f.input_size)
    set_gate_mode(plain, "identity")
    for gate in gate_layers(plain):
        gate.trainable = False
    plain.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    search = PNSearch(network, predictor=f.predictor, target_reduction=0.5, pn_batch_size=64)
    search.compile()
    # Fill the memory so that the PN terms are active in the timed steps.
    for _ in range(64):
        search.memory.push(tf.concat([tf.ones(w) for w in search.widths], 0), tf.constant(0.5))

    plain.make_train_function()
    search.make_train_function()
    train_fn, search_fn = plain.train_function, search.train_function
    batches = tf.data.Dataset.from_tensors((x, y)).repeat()
    plain_iter, search_iter = iter(batches), iter(batches)
    for _ in range(f.warmup):
        _timed(train_fn, plain_iter)
        _timed(search_fn, search_iter)
    train_s, search_s = [], []
    for _ in range(f.steps):
        train_s.append(_timed(train_fn, plain_iter))
        search_s.append(_timed(search_fn, search_iter))
    result = {
        "arch": f.arch,
        "batch_size": f.batch_size,
        "predictor": f.predictor,
        "search_step_s": float(np.median(search_s)),
        "train_step_s": float(np.median(train_s)),
        "ratio": float(np.median(search_s) / np.median(train_s)),
        "steps": f.steps,
        "threads": os.cpu_count(),
    }
    if f.json:
        print(json.dumps(result))
    else:
        print(f"{f.arch} batch {f.batch_size}: search step {result['search_step_s'] * 1e3:.1f} ms, "
              f"training step {result['train_step_s'] * 1e3:.1f} ms, ratio {result['ratio']:.3f}")


if __name__ == "__main__":
    app.run(main)
