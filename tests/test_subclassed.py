"""A user's Layer subclass made of Keras layers and keras.ops is unrolled into the graph."""

import logging
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest

from pn_tf import auto
from pn_tf.extract import extract_at
from pn_tf.graph import ChannelGraph, FlopsModel, flatten
from tests.helpers import random_images, randomize_batchnorm


class ResidualBlock(keras.layers.Layer):
    """conv-BN-ReLU-conv-BN plus the skip, as users write it (no rule registered)."""

    def __init__(self, channels, width, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)
        self.bn1 = keras.layers.BatchNormalization()
        self.conv2 = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)
        self.bn2 = keras.layers.BatchNormalization()

    def call(self, x, training=None):
        y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        return keras.ops.relu(y + x)


class Stage(keras.layers.Layer):
    """A user's layer holding another user's layer (unrolled recursively)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = ResidualBlock(8, 12)
        self.head = keras.layers.Conv2D(16, 1)

    def call(self, x):
        return self.head(self.block(x))


class Branching(keras.layers.Layer):
    """Python branching on a tensor's value: cannot be recorded symbolically."""

    def compute_output_shape(self, input_shape):  # Keras cannot trace call() for the shape either
        return input_shape

    def call(self, x):
        if keras.ops.mean(x) > 0:
            return x * 2.0
        return x


class Noisy(keras.layers.Layer):
    """Randomness drawn inside call(): the recorded graph would hold one draw as a constant."""

    def call(self, x):
        return x + keras.random.normal(keras.ops.shape(x)[1:])


class ScaledResidual(keras.layers.Layer):
    """A residual block with a layer scale of its own (``x + gamma * f(x)``), as users write it:
    its weight ``gamma`` is used directly in keras.ops, and no rule is registered for it."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.conv1 = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)
        self.bn1 = keras.layers.BatchNormalization()
        self.conv2 = keras.layers.Conv2D(1, 1)  # widened in build()

    def build(self, input_shape):
        channels = input_shape[-1]
        self.conv2 = keras.layers.Conv2D(channels, 1)
        self.gamma = self.add_weight(shape=(channels,), initializer="random_uniform", name="gamma")

    def call(self, x, training=None):
        y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
        return x + self.gamma * self.conv2(y)


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = ResidualBlock(8, 16, name="block1")(x)
    x = ResidualBlock(8, 16, name="block2")(x)
    x = Stage(name="stage")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return randomize_batchnorm(keras.Model(inputs, keras.layers.Dense(10, name="head")(x)))


def test_residual_block_is_unrolled_and_prunes_equivalently(tmp_path):
    model = _model()
    x = random_images((16, 16, 3), seed=1)
    flat = flatten(model)
    assert not [layer.name for layer in flat.layers if isinstance(layer, (ResidualBlock, Stage))]
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-5)
    graph = ChannelGraph(model)
    assert graph.opaque_layers == []
    inner = {model.get_layer(name).conv1.name for name in ("block1", "block2")}
    inner.add(model.get_layer("stage").block.conv1.name)
    groups = auto.find_groups(model)
    producers = {p for g in groups for p in g.producers}
    assert inner <= producers  # the blocks' internal widths are prunable groups

    gated = auto.insert_gates(model, groups)
    original = np.asarray(model(x))
    assert np.abs(original).max() > 1e-3
    np.testing.assert_array_equal(original, np.asarray(gated(x)))  # identity gates: same model
    auto.random_gate_logits(gated, seed=2)
    extraction = extract_at(gated, 0.3, images=x)
    assert extraction.equivalent
    assert extraction.max_abs_diff <= 1e-4 * max(1.0, extraction.output_scale)
    assert abs(extraction.selection.reduction - 0.3) < 0.01
    assert FlopsModel(extraction.model).total == pytest.approx(extraction.selection.cost, rel=1e-2)

    narrow = extraction.model
    path = tmp_path / "pruned.keras"
    narrow.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(narrow(x)))
    # A fresh process that never defines ResidualBlock or Stage (nor imports this file or pn_tf).
    script = (
        "import sys, numpy as np, keras\n"
        "m = keras.models.load_model(sys.argv[1])\n"
        "y = np.asarray(m(np.load(sys.argv[2])))\n"
        "assert np.allclose(y, np.load(sys.argv[3]), rtol=1e-5, atol=1e-5), np.abs(y - np.load(sys.argv[3])).max()\n"
        "print('loaded', len(m.layers))\n")
    out = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], check=False, cwd=tmp_path, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0 and "loaded" in out.stdout, out.stderr[-3000:]


class PassesTraining(keras.layers.Layer):
    """A block that passes ``training`` to every sub-layer, one whose call takes none (keras-hub's
    HGNetV2 does so with an Identity standing for an absent downsampling)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = keras.layers.Conv2D(12, 3, padding="same", activation="relu")
        self.skip = keras.layers.Identity()
        self.conv2 = keras.layers.Conv2D(8, 3, padding="same")

    def call(self, x, training=None):
        return self.conv2(self.conv1(self.skip(x, training=training)))


def test_a_training_argument_given_to_a_layer_without_one_does_not_stay_in_the_graph():
    """Kept in the unrolled node, it broke every later call of the pruned model on a new input
    (HGNetV2's latency table: "Identity.compute_output_spec() got an unexpected keyword argument
    'training'")."""
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.GlobalAveragePooling2D()(PassesTraining(name="block")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    gated = auto.insert_gates(model)
    auto.random_gate_logits(gated, seed=1)
    images = random_images((12, 12, 3), seed=1)
    narrow = extract_at(gated, 0.3, images=images).model
    again = keras.Input((12, 12, 3), batch_size=1)
    rebuilt = keras.Model(again, narrow(again))  # what the latency table does to time a network
    np.testing.assert_allclose(np.asarray(rebuilt(images[:1])), np.asarray(narrow(images[:1])), rtol=1e-6)


@pytest.mark.parametrize("layer, why", [(Branching, "fails on symbolic inputs"),
                                        (Noisy, "does not give its outputs")])
def test_layer_that_cannot_be_unrolled_stays_opaque(caplog, layer, why):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    x = layer(name="odd")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c2")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    assert flatten(model) is model
    with caplog.at_level(logging.WARNING):
        graph = ChannelGraph(model)
    assert graph.opaque_layers == ["odd"]
    assert graph.operation("odd") is model.get_layer("odd")  # named, for the coverage check
    messages = [r.getMessage() for r in caplog.records if "'odd'" in r.getMessage()]
    assert len(messages) == 1 and why in messages[0] and layer.__name__ in messages[0], messages
    assert [g.producers for g in auto.find_groups(model)] == [["c2"]]


def test_layer_scale_weight_stays_a_weight_and_prunes(tmp_path):
    """A weight the block uses in keras.ops (its layer scale) becomes a Parameter layer holding the
    same variable: trainable, on the residual stream's channels, sliced with them."""
    from pn_tf.coverage.check import check_model
    from pn_tf.layers import Parameter

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(24, 3, padding="same", name="stem")(inputs)
    x = ScaledResidual(32, name="block1")(x)
    x = ScaledResidual(32, name="block2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = randomize_batchnorm(keras.Model(inputs, keras.layers.Dense(5, name="head")(x)))
    flat = flatten(model)
    parameters = [layer for layer in flat.layers if isinstance(layer, Parameter)]
    assert [p.name for p in parameters] == ["block1_gamma", "block2_gamma"]
    assert parameters[0].trainable_weights[0] is model.get_layer("block1").gamma  # the same variable
    graph = ChannelGraph(model)
    assert graph.opaque_layers == []
    groups = auto.find_groups(model)
    stream = [g for g in groups if "stem" in g.producers]
    assert stream and {"block1_gamma", "block2_gamma"} <= set(stream[0].producers)

    x = random_images((12, 12, 3), seed=1)
    row = check_model(model, target=0.3, x=x, tflite=False)
    assert row["opaque"] == [] and row["opaque_custom"] == []
    assert row["prunable_share"] == 1.0
    assert row["identity_max_abs_diff"] == 0.0
    assert row["equivalent"] and row["max_abs_diff"] <= 1e-4 * max(1.0, row["output_scale"])
    assert abs(row["flops_reduction"] - 0.3) < 0.01


class WindowBlock(keras.layers.Layer):
    """A Swin-like block as users write it: attention in windows of the batch written with
    keras.ops (matmul, softmax, unstack), a cyclic shift (roll), and window sizes computed from
    the batch size (``ops.shape(x)[0] // windows``, which a symbolic None batch cannot divide)."""

    def __init__(self, dim, heads, window, hidden, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.heads, self.window = dim, heads, window
        self.norm1 = keras.layers.LayerNormalization()
        self.qkv = keras.layers.Dense(3 * dim)
        self.proj = keras.layers.Dense(dim)
        self.norm2 = keras.layers.LayerNormalization()
        self.fc1 = keras.layers.Dense(hidden)
        self.fc2 = keras.layers.Dense(dim)

    def call(self, x):
        ops = keras.ops
        batch, height, width, channels = ops.shape(x)
        ws, heads = self.window, self.heads
        rows, cols = height // ws, width // ws
        h = ops.roll(self.norm1(x), shift=(1, 1), axis=(1, 2))
        h = ops.reshape(h, (batch, rows, ws, cols, ws, channels))
        h = ops.reshape(ops.transpose(h, (0, 1, 3, 2, 4, 5)), (-1, ws * ws, channels))
        windows = ops.shape(h)[0]
        qkv = ops.reshape(self.qkv(h), (windows, ws * ws, 3, heads, channels // heads))
        q, k, v = ops.unstack(ops.transpose(qkv, (2, 0, 3, 1, 4)), axis=0)
        scores = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * 0.25, axis=-1)
        o = ops.reshape(ops.transpose(ops.matmul(scores, v), (0, 2, 1, 3)), (windows, ws * ws, channels))
        o = ops.reshape(self.proj(o), (windows // (rows * cols), rows, cols, ws, ws, channels))
        o = ops.reshape(ops.transpose(o, (0, 1, 3, 2, 4, 5)), (-1, height, width, channels))
        x = x + ops.roll(o, shift=(-1, -1), axis=(1, 2))
        return x + self.fc2(ops.gelu(self.fc1(self.norm2(x))))


def test_windowed_attention_block_with_batch_arithmetic_unrolls_and_prunes():
    """Traced at a known batch size, its reshapes made batch-free: the MLP's hidden units are a
    group, the ops attention's token products are counted (a hand count), extraction is exact."""
    from pn_tf.coverage.check import check_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="stem")(inputs)
    x = WindowBlock(16, heads=2, window=4, hidden=128, name="block")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="head")(x))
    sample = random_images((8, 8, 3), seed=1)
    flat = flatten(model)
    assert not [layer for layer in flat.layers if isinstance(layer, WindowBlock)]
    np.testing.assert_allclose(np.asarray(flat(sample)), np.asarray(model(sample)), rtol=1e-5, atol=1e-5)
    graph = ChannelGraph(model)
    assert graph.opaque_layers == [] and graph.uncounted_layers == []
    groups = auto.find_groups(model)
    assert any(g.producers == [model.get_layer("block").fc1.name] for g in groups)  # MLP hidden units
    flops = FlopsModel(graph)
    # 4 windows of 16 tokens, 2 heads of 8: QK^T and AV each 4 * 2 * 16 * 16 * 8 MACs.
    assert sum(m for _, kind, m in flops.table() if kind == "matmul") == 2 * 4 * 2 * 16 * 16 * 8
    tokens = 64
    dense = tokens * (16 * 48 + 16 * 16 + 16 * 128 + 128 * 16)
    assert flops.total == 8 * 8 * 27 * 16 + dense + 2 * 4 * 2 * 16 * 16 * 8 + 16 * 5
    row = check_model(model, target=0.3, x=sample, tflite=False)
    assert row["identity_max_abs_diff"] == 0.0
    assert row["equivalent"] and row["max_abs_diff"] <= 1e-4 * max(1.0, row["output_scale"])
    assert abs(row["flops_reduction"] - 0.3) < 0.01
    # One image fills 4 rows of the windows' batch axis; a latency unit on them runs on 4 rows.
    from pn_tf.graph.replay import batch_rows
    from pn_tf.latency import units

    rows = batch_rows(flat)
    assert set(rows.values()) == {4}
    qkv = [u for u in units.split_units(flat) if u[0].operation is model.get_layer("block").qkv]
    unit = units.unit_model(qkv[0], rows[id(qkv[0][0].input_tensors[0])])
    assert unit.inputs[0].shape == (4, 16, 16)


def test_matmul_and_einsum_macs_are_counted_and_checked_against_tflite():
    """An attention written with keras.ops.matmul (its values' channels carried, prunable) and a
    product written with einsum (counted, unpruned): pn-tf's MACs equal the TFLite graph's."""
    from pn_tf.export import export_tflite
    from pn_tf.tflite.inspection import tflite_macs

    inputs = keras.Input((16, 8))
    q = keras.layers.Dense(8, name="q")(inputs)
    k = keras.layers.Dense(8, name="k")(inputs)
    v = keras.layers.Dense(12, name="v")(inputs)
    scores = keras.ops.softmax(keras.ops.einsum("bqc,bkc->bqk", q, k), axis=-1)
    context = keras.ops.matmul(scores, v)  # (batch, 16, 12): v's channels
    y = keras.layers.Dense(4, name="out")(keras.layers.Activation("relu")(context))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(y))
    graph = ChannelGraph(model)
    assert graph.uncounted_layers == []
    flops = FlopsModel(graph)
    kinds = {kind: m for _, kind, m in flops.table() if kind in ("matmul", "einsum")}
    assert kinds == {"einsum": 16 * 16 * 8, "matmul": 16 * 16 * 12}
    assert any(g.producers == ["v"] for g in auto.find_groups(model))  # carried through matmul
    with tempfile.TemporaryDirectory() as tmp:
        path = export_tflite(model, os.path.join(tmp, "m.tflite"))
        assert tflite_macs(path) == flops.total
