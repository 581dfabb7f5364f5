"""Episodic memory and its imbalance-aware sampler (METHOD.md item 6)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import keras

from pn_tf.search import EpisodicMemory

WIDTHS = [2, 3]


def arch(*values):
    return tf.constant(values, tf.float32)


def fill(mem, accs, seed=0):
    """Store one entry per accuracy (pushing each pair ``average_every`` times)."""
    rng = np.random.RandomState(seed)
    for a in accs:
        vec = (rng.uniform(size=mem.dim) < 0.5).astype("float32")
        for _ in range(mem.average_every):
            mem.push(vec, a)


def test_push_averages_pairs_and_counts():
    mem = EpisodicMemory(WIDTHS, capacity=4)
    assert int(mem.push(arch(1, 1, 1, 0, 0), 0.4)) == 0  # pending, nothing stored
    assert int(mem.pending_n.numpy()) == 1
    assert int(mem.push(arch(1, 0, 1, 1, 0), 0.6)) == 1
    np.testing.assert_allclose(mem.archs.numpy()[0], [1, 0.5, 1, 0.5, 0])
    np.testing.assert_allclose(mem.accs.numpy()[0], 0.5)
    assert int(mem.pending_n.numpy()) == 0 and float(mem.pending_acc.numpy()) == 0
    np.testing.assert_array_equal(mem.pending_arch.numpy(), 0)
    mem.push(arch(0, 0, 0, 0, 0), 0.9)
    mem.push(arch(0, 0, 0, 0, 1), 0.7)
    assert int(mem.count.numpy()) == 2
    np.testing.assert_allclose(mem.archs.numpy()[1], [0, 0, 0, 0, 0.5])
    np.testing.assert_allclose(mem.accs.numpy()[:3], [0.5, 0.8, 0.0])


def test_full_memory_averages_into_closest_accuracy():
    mem = EpisodicMemory(WIDTHS, capacity=4, average_every=1)
    for i, a in enumerate([0.1, 0.3, 0.6, 0.9]):
        mem.push(tf.one_hot(i, 5), a)
    assert int(mem.count.numpy()) == 4
    before = mem.archs.numpy().copy()
    assert int(mem.push(arch(0, 0, 0, 0, 1), 0.5)) == 4  # closest stored acc: 0.6 (slot 2)
    np.testing.assert_allclose(mem.accs.numpy(), [0.1, 0.3, 0.55, 0.9], rtol=1e-6)
    expected = before.copy()
    expected[2] = (before[2] + np.array([0, 0, 0, 0, 1])) / 2
    np.testing.assert_allclose(mem.archs.numpy(), expected)
    assert int(mem.count.numpy()) == 4


def test_sampler_weights_are_inverse_bin_sizes():
    mem = EpisodicMemory(WIDTHS, capacity=8, average_every=1, num_bins=4)
    # Range [0.0, 1.0] in 4 bins of 0.25: bin 0 {0.0, 0.1, 0.2}, bin 1 {0.3}, bin 2 {},
    # bin 3 {0.8, 1.0}; two empty slots.
    fill(mem, [0.0, 0.1, 0.3, 0.2, 0.8, 1.0])
    raw = np.array([1 / 3, 1 / 3, 1, 1 / 3, 1 / 2, 1 / 2, 0, 0])
    np.testing.assert_allclose(mem.sampler_weights().numpy(), raw / raw.sum(), rtol=1e-6)
    np.testing.assert_array_equal(mem.bin_ids().numpy()[:6], [0, 0, 1, 0, 3, 3])


def test_sampler_degenerate_cases():
    mem = EpisodicMemory(WIDTHS, capacity=5, average_every=1)
    np.testing.assert_array_equal(mem.sampler_weights().numpy(), 0)
    archs, accs = mem.sample(3, tf.constant([0, 1]))  # empty: slot 0, zeros
    assert archs.shape == (3, 5) and np.all(accs.numpy() == 0)
    mem.push(arch(1, 0, 1, 0, 1), 0.7)  # a single entry
    np.testing.assert_allclose(mem.sampler_weights().numpy(), [1, 0, 0, 0, 0])
    archs, accs = mem.sample(4, tf.constant([0, 1]))
    np.testing.assert_allclose(accs.numpy(), 0.7)
    np.testing.assert_allclose(archs.numpy(), np.tile([1, 0, 1, 0, 1], (4, 1)))
    mem.push(arch(0, 0, 0, 0, 0), 0.7)  # all accuracies equal: one bin, uniform
    mem.push(arch(1, 1, 1, 1, 1), 0.7)
    np.testing.assert_allclose(mem.sampler_weights().numpy(), [1 / 3] * 3 + [0, 0])


def test_sample_is_stateless_and_follows_weights():
    mem = EpisodicMemory(WIDTHS, capacity=8, average_every=1, num_bins=4)
    fill(mem, [0.0, 0.1, 0.3, 0.2, 0.8, 1.0])
    a1, c1 = mem.sample(64, tf.constant([3, 4]))
    a2, c2 = mem.sample(64, tf.constant([3, 4]))
    a3, _ = mem.sample(64, tf.constant([5, 4]))
    assert a1.shape == (64, 5) and c1.shape == (64,)
    np.testing.assert_array_equal(a1.numpy(), a2.numpy())
    np.testing.assert_array_equal(c1.numpy(), c2.numpy())
    assert not np.array_equal(a1.numpy(), a3.numpy())
    # Each drawn (arch, acc) pair is a stored pair.
    stored = {tuple(np.r_[a, c]) for a, c in zip(mem.archs.numpy()[:6], mem.accs.numpy()[:6])}
    assert all(tuple(np.r_[a, c]) in stored for a, c in zip(a1.numpy(), c1.numpy()))
    # Frequencies follow the weights: bin 1 (one entry, 0.3) gets about 1/3 of the draws.
    _, many = mem.sample(6000, tf.constant([7, 7]))
    share = np.mean(np.isclose(many.numpy(), 0.3))
    assert abs(share - 1 / 3) < 0.03, share


def test_inside_tf_function_matches_eager():
    eager = EpisodicMemory(WIDTHS, capacity=3)
    graph = EpisodicMemory(WIDTHS, capacity=3)
    push = tf.function(graph.push)
    rng = np.random.RandomState(0)
    for _ in range(11):  # fills the 3 slots and then averages into them
        vec = (rng.uniform(size=5) < 0.5).astype("float32")
        acc = np.float32(rng.uniform())
        eager.push(vec, acc)
        push(tf.constant(vec), tf.constant(acc))
    for a, b in zip(eager.weights, graph.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    sample = tf.function(lambda seed: graph.sample(16, seed))
    got = sample(tf.constant([1, 2]))
    want = eager.sample(16, tf.constant([1, 2]))
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy())
    # One trace serves every push (no Python branching on tensor values).
    assert push.experimental_get_tracing_count() == 1


def test_split_concat_config_and_tracking(tmp_path):
    mem = EpisodicMemory([2, 3, 1], capacity=7, average_every=3, num_bins=5)
    x = tf.reshape(tf.range(12, dtype=tf.float32), (2, 6))
    parts = mem.split(x)
    assert [p.shape for p in parts] == [(2, 2), (2, 3), (2, 1)]
    np.testing.assert_array_equal(mem.concat(parts).numpy(), x.numpy())
    cfg = mem.get_config()
    assert {k: cfg[k] for k in ("widths", "capacity", "average_every", "num_bins")} == {
        "widths": [2, 3, 1], "capacity": 7, "average_every": 3, "num_bins": 5}
    clone = EpisodicMemory.from_config(cfg)
    assert clone.archs.shape == (7, 6) and not clone.trainable_weights
    assert {v.aggregation for v in mem.weights} == {"only_first_replica"}

    # As an attribute of a Model its state is tracked and checkpointed.
    class Holder(keras.Model):
        def __init__(self):
            super().__init__()
            self.memory = EpisodicMemory([2, 3], capacity=4, average_every=1)

    holder = Holder()
    assert len(holder.non_trainable_weights) == 6
    holder.memory.push(arch(1, 0, 1, 0, 1), 0.25)
    path = str(tmp_path / "ckpt")
    saved = tf.train.Checkpoint(model=holder).write(path)
    other = Holder()
    tf.train.Checkpoint(model=other).read(saved).assert_consumed()
    for a, b in zip(holder.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from pn_tf.search import EpisodicMemory, GRUPredictor

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    widths = [2, 3]
    with strategy.scope():
        mem = EpisodicMemory(widths, capacity=3)
        pn = GRUPredictor(widths, hidden=4)
        opt = keras.optimizers.AdamW(1e-3, weight_decay=1e-3)
        opt.build(pn.trainable_variables)
    single = EpisodicMemory(widths, capacity=3)
    rng = np.random.RandomState(0)
    vecs = (rng.uniform(size=(9, 5)) < 0.5).astype("float32")
    accs = rng.uniform(size=9).astype("float32")

    @tf.function
    def step(vec, acc, seed):
        def replica_fn():
            mem.push(vec, acc)
            archs, a = mem.sample(8, seed)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.abs(pn(archs, training=True)[:, 0] - a))
            grads = tape.gradient(loss, pn.trainable_variables)
            grads = tf.distribute.get_replica_context().all_reduce("mean", grads)
            opt.apply_gradients(zip(grads, pn.trainable_variables))
            return archs
        return strategy.run(replica_fn)

    for i in range(9):
        out = step(tf.constant(vecs[i]), tf.constant(accs[i]), tf.constant([i, 1]))
        single.push(vecs[i], accs[i])
        per_replica = strategy.experimental_local_results(out)
        np.testing.assert_array_equal(per_replica[0].numpy(), per_replica[1].numpy())
        np.testing.assert_array_equal(
            per_replica[0].numpy(), single.sample(8, tf.constant([i, 1]))[0].numpy())
    for mv, sv in zip(mem.weights, single.weights):
        copies = [v.numpy() for v in mv.value.values]
        np.testing.assert_array_equal(copies[0], copies[1])
        np.testing.assert_allclose(copies[0], sv.numpy(), rtol=1e-6)
    assert int(mem.count.numpy()) == 3
    print("MIRRORED_OK")
    """
)


def test_mirrored_strategy_push_matches_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT], env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert "MIRRORED_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
