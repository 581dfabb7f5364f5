"""Performance prediction networks (METHOD.md item 5, supplement Table 2)."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from pn_tf.search import (
    BiGRUPredictor,
    GRUPredictor,
    LinearPredictor,
    WeightNormDense,
    build_predictor,
)

KINDS = ("gru", "bigru", "linear", "linear_scaled")


def random_gates(widths, batch=5, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.uniform(0, 1, (batch, c)).astype("float32") for c in widths]


@pytest.mark.parametrize("kind", KINDS)
def test_output_shape_and_range(kind):
    widths = [4, 8, 6]
    model = build_predictor(kind, widths, **({"hidden": 8} if not kind.startswith("linear") else {}))
    y = model(random_gates(widths), training=False)
    assert y.shape == (5, 1) and y.dtype == tf.float32
    assert np.all((y.numpy() > 0) & (y.numpy() < 1))
    # A concatenated (batch, sum C_i) tensor gives the same answer as the list.
    concat = np.concatenate(random_gates(widths), axis=-1)
    np.testing.assert_allclose(model(concat).numpy(), y.numpy(), rtol=1e-6)


def test_factory():
    assert build_predictor("none", [4]) is None
    with pytest.raises(ValueError, match="gru.*bigru.*linear"):
        build_predictor("mlp", [4])
    assert isinstance(build_predictor("gru", [4]), GRUPredictor)
    assert isinstance(build_predictor("bigru", [4]), BiGRUPredictor)
    assert isinstance(build_predictor("linear", [4]), LinearPredictor)
    assert not build_predictor("linear", [4]).scale_inputs
    assert build_predictor("linear_scaled", [4]).scale_inputs


def test_command_lines_offer_every_kind():
    """pn_tf.train and tools/autoprune.py spell the kinds out (no keras import at start-up)."""
    import importlib.util
    import pathlib

    from absl import flags

    from pn_tf.search import PREDICTOR_KINDS
    from pn_tf.train import define_flags

    values = flags.FlagValues()
    define_flags(values)
    assert tuple(values["predictor"].parser.enum_values) == PREDICTOR_KINDS
    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "autoprune.py"
    spec = importlib.util.spec_from_file_location("autoprune_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (action,) = [a for a in module._parser()._actions if a.dest == "predictor"]
    assert tuple(action.choices) == PREDICTOR_KINDS


def test_gru_parameter_count_table2():
    widths = [16] * 9 + [32] * 9 + [64] * 9  # ResNet-56's 27 gates
    model = GRUPredictor(widths)
    fc = sum(c * 16 + 16 for c in widths)
    bn = len(widths) * 4 * 16  # gamma, beta (trainable) + moving mean, variance
    # Keras GRU(reset_after=True) == PyTorch GRU(16, 16): W_ih, W_hh, b_ih, b_hh.
    gru = 3 * (16 * 16 + 16 * 16 + 16 + 16)
    head = 16 + 1
    assert gru == 1632
    assert model.count_params() == fc + bn + gru + head == 19937
    # All-16 widths: the number quoted in the docstring.
    assert GRUPredictor([16] * 27).count_params() == 27 * 272 + 27 * 64 + 1632 + 17 == 10721
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == fc + bn // 2 + gru + head


def test_bigru_and_linear_parameter_counts():
    widths = [16] * 27
    # weight norm v (C_i x 128) + g (128); LayerNorm 256; BiGRU 2 x 3 x (128*64 + 64*64 + 2*64).
    per_layer = 16 * 128 + 128 + 2 * 128
    bigru = 2 * 3 * (128 * 64 + 64 * 64 + 2 * 64)
    assert BiGRUPredictor(widths).count_params() == 27 * per_layer + bigru + 128 == 140288
    assert LinearPredictor(widths).count_params() == 16 * 27 + 1


def test_weight_norm_dense():
    layer = WeightNormDense(3)
    x = tf.ones((2, 5))
    y = layer(x)
    # Initially g = ||v|| column-wise, so the effective kernel is v itself.
    np.testing.assert_allclose(layer.kernel().numpy(), layer.v.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(y.numpy(), x.numpy() @ layer.v.numpy(), rtol=1e-5)
    # Scaling v leaves the layer unchanged; g sets the column norms.
    layer.v.assign(layer.v * 7.0)
    np.testing.assert_allclose(layer(x).numpy(), y.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(layer.kernel().numpy(), axis=0), layer.g.numpy(), rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["gru", "bigru"])
def test_trains_on_synthetic_target(kind):
    """A few hundred AdamW steps with MAE learn acc = mean(first group's gates)."""
    widths = [6, 5, 4]
    keras.utils.set_random_seed(0)
    model = build_predictor(kind, widths, hidden=16)
    opt = keras.optimizers.AdamW(1e-2, weight_decay=1e-3)
    rng = np.random.RandomState(1)
    # Hard-ish architectures like the memory holds: Bernoulli gates with random keep rates.
    keep = rng.uniform(0.1, 0.9, (512, 1))
    data = (rng.uniform(0, 1, (512, sum(widths))) < keep).astype("float32")
    target = data[:, : widths[0]].mean(axis=1, keepdims=True) * 0.8 + 0.1
    data, target = tf.constant(data), tf.constant(target)

    @tf.function
    def step(i):
        idx = tf.random.stateless_uniform((64,), [i, 0], 0, 512, dtype=tf.int32)
        x, y = tf.gather(data, idx), tf.gather(target, idx)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    def eval_loss():
        return float(tf.reduce_mean(tf.abs(model(data, training=False) - target)))

    before = eval_loss()
    for i in range(300):
        step(tf.constant(i))
    after = eval_loss()
    assert after < 0.35 * before, (before, after)
    assert after < 0.05


@pytest.mark.parametrize("scale_inputs", [False, True])
def test_linear_predictor_saturation_at_mobilenetv2_size(scale_inputs):
    """With MobileNetV2's ~7,100 gates the plain LR's sigmoid reaches exactly 1 and stays.

    Same optimiser and loss as the search (AdamW 1e-3, L1, PN batches of 16); targets in
    0.6-0.9 rise with the share of open gates, like the memory's batch accuracies. The
    input scaled by 1/sqrt(#gates) keeps the output in range and fits the targets.
    """
    widths = [137] * 52
    keras.utils.set_random_seed(0)
    model = LinearPredictor(widths, scale_inputs=scale_inputs)
    opt = keras.optimizers.AdamW(1e-3, weight_decay=1e-3)

    @tf.function
    def step(i):
        keep = tf.random.stateless_uniform((16, 1), [i, 1], 0.45, 1.0)
        x = tf.cast(tf.random.stateless_uniform((16, sum(widths)), [i, 2]) < keep, "float32")
        y = 0.6 + 0.3 * keep
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = tf.reduce_mean(tf.abs(pred - y))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return tf.reduce_mean(pred), loss

    preds, losses = zip(*[step(tf.constant(i)) for i in range(200)])
    late_pred, late_loss = np.mean(preds[-50:]), np.mean(losses[-50:])
    if scale_inputs:
        assert 0.7 < late_pred < 0.9 and late_loss < 0.03, (late_pred, late_loss)
    else:
        assert late_pred == 1.0 and late_loss > 0.1, (late_pred, late_loss)


@pytest.mark.parametrize("kind", KINDS)
def test_keras_save_load_round_trip(kind, tmp_path):
    widths = [4, 8, 6]
    model = build_predictor(kind, widths)
    x = random_gates(widths)
    # Move BN statistics off their defaults so that they are checked too.
    model(x, training=True)
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.widths == widths
    assert getattr(loaded, "scale_inputs", None) == getattr(model, "scale_inputs", None)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-7)
