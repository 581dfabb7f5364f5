"""pn_tf.layers.batchnorm.BatchNormalization (fused training step) computes what Keras's computes."""

import numpy as np
import keras
import pytest

from pn_tf.layers.batchnorm import BatchNormalization as FusedBatchNormalization


def _pair(**kwargs):
    """A Keras BN and a fused BN with the same (non-trivial) weights."""
    rng = np.random.RandomState(0)
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    fused = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    for layer in (plain, fused):
        layer.build((None, 5, 6, 7))
    weights = [rng.uniform(0.5, 1.5, 7), rng.randn(7), rng.randn(7), rng.uniform(0.5, 2.0, 7)]
    plain.set_weights(weights)
    fused.set_weights(weights)
    return plain, fused


@pytest.mark.parametrize("training", [True, False])
def test_outputs_and_moving_statistics_match_keras(training):
    plain, fused = _pair()
    x = (np.random.RandomState(1).randn(4, 5, 6, 7) * 3 + 2).astype("float32")
    for step in range(3):  # the moving statistics follow the same updates
        np.testing.assert_allclose(fused(x, training=training), plain(x, training=training),
                                   rtol=1e-5, atol=1e-5)
        x = x * 0.5 + step
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gradients_match_keras():
    import tensorflow as tf

    plain, fused = _pair()
    x = tf.constant(np.random.RandomState(2).randn(4, 5, 6, 7).astype("float32"))
    w = tf.constant(np.random.RandomState(3).randn(4, 5, 6, 7).astype("float32"))
    grads = []
    for layer in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * w)
        grads.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _op_types(layer, x, training):
    import tensorflow as tf

    fn = tf.function(lambda t: layer(t, training=training))
    return {op.type for op in fn.get_concrete_function(tf.constant(x)).graph.get_operations()}


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_training_step_is_one_fused_op(dtype):
    _, fused = _pair(dtype=dtype)
    x = np.ones((2, 5, 6, 7), "float32")
    assert "FusedBatchNormV3" in _op_types(fused, x, training=True)
    # Inference is Keras's own graph (what SavedModel and TFLite export see).
    assert "FusedBatchNormV3" not in _op_types(fused, x, training=False)


def test_bfloat16_inputs_are_normalized_in_the_fused_kernel():
    plain, fused = _pair(dtype="mixed_bfloat16")
    x = np.random.RandomState(4).randn(8, 5, 6, 7).astype("float32") * 4
    y_fused, y_plain = fused(x, training=True), plain(x, training=True)
    assert {keras.backend.standardize_dtype(y.dtype) for y in (y_fused, y_plain)} == {"bfloat16"}
    np.testing.assert_allclose(np.asarray(y_fused, "float32"), np.asarray(y_plain, "float32"),
                               atol=0.05)
    assert fused.moving_mean.dtype == "float32"


@pytest.mark.parametrize("kernel", ["bfloat16", "float32 fallback"])
def test_bfloat16_training_steps_follow_keras_moving_statistics(kernel, monkeypatch):
    from pn_tf.layers import batchnorm

    if kernel == "float32 fallback":  # a machine without a bfloat16 FusedBatchNormV3 kernel
        monkeypatch.setattr(batchnorm, "fused_bfloat16_supported", lambda: False)
    elif not batchnorm.fused_bfloat16_supported():
        pytest.skip("this machine has no bfloat16 FusedBatchNormV3 kernel")
    plain, fused = _pair(dtype="mixed_bfloat16")
    x = np.random.RandomState(6).randn(8, 5, 6, 7).astype("float32") * 2 + 1
    for _ in range(3):
        y_fused, y_plain = fused(x, training=True), plain(x, training=True)
        assert keras.backend.standardize_dtype(y_fused.dtype) == "bfloat16"
        np.testing.assert_allclose(np.asarray(y_fused, "float32"), np.asarray(y_plain, "float32"),
                                   atol=0.05)
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0.02, atol=0.02)


def test_center_and_scale_off_match_keras():
    plain, fused = (cls(center=False, scale=False, momentum=0.9, epsilon=1e-5)
                    for cls in (keras.layers.BatchNormalization, FusedBatchNormalization))
    x = np.random.RandomState(7).randn(4, 5, 6, 7).astype("float32") * 3
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), rtol=1e-5, atol=1e-5)
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_pure_bfloat16_policy_takes_the_keras_path():
    layer = FusedBatchNormalization(dtype="bfloat16")
    x = np.random.RandomState(8).randn(2, 5, 6, 7).astype("float32")
    y = layer(x, training=True)  # bfloat16 moving statistics: Keras's own update
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert "FusedBatchNormV3" not in _op_types(layer, x, training=True)


def test_frozen_layer_and_other_ranks_take_the_keras_path():
    plain, fused = _pair()
    fused.trainable = plain.trainable = False  # frozen BN normalizes with its moving statistics
    x = np.random.RandomState(5).randn(2, 5, 6, 7).astype("float32")
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), rtol=1e-6)
    dense = FusedBatchNormalization()
    y = dense(np.ones((3, 4), "float32"), training=True)  # 2-D input: Keras's own path
    assert y.shape == (3, 4)


def test_config_round_trip_and_keras_weights(tmp_path):
    inputs = keras.Input((4, 4, 3))
    outputs = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")(inputs)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("bn")) is FusedBatchNormalization
    assert loaded.get_layer("bn").get_config() == model.get_layer("bn").get_config()
    # Weights files address layers by class name: Keras's BN and this one share checkpoints
    # (the shipped baselines were trained with Keras's), in both directions.
    twin = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
    twin.get_layer("bn").set_weights([np.full(3, v, "float32") for v in (2.0, 1.0, 0.5, 3.0)])
    twin.save_weights(tmp_path / "w.weights.h5")
    model.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_array_equal(model.get_layer("bn").moving_variance, [3.0, 3.0, 3.0])
    model.get_layer("bn").moving_mean.assign([4.0, 4.0, 4.0])
    model.save_weights(tmp_path / "back.weights.h5")
    twin.load_weights(tmp_path / "back.weights.h5")
    np.testing.assert_array_equal(twin.get_layer("bn").moving_mean, [4.0, 4.0, 4.0])
