import numpy as np
import keras
import pytest

from pn_tf.layers import ChannelGate, ChannelShuffle, ChannelSplit, ChannelZeroPad, set_gate_mode


def _gated_model(mode="identity"):
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = ChannelGate(mode=mode, name="gate")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def test_identity_gate_changes_nothing():
    x = np.random.RandomState(0).randn(2, 5, 5, 4).astype("float32")
    gate = ChannelGate(mode="identity")
    np.testing.assert_array_equal(gate(x), x)


def test_soft_gate_formula_and_noise():
    gate = ChannelGate(mode="soft", base=3.0, temperature=0.4)
    gate.build((None, 4))
    theta = np.array([-5.0, -3.0, 0.0, 2.0], "float32")
    noise = np.array([0.1, -0.2, 0.3, 0.0], "float32")
    gate.logits.assign(theta)
    gate.noise.assign(noise)
    expected = 1 / (1 + np.exp(-(theta + noise + 3.0) / 0.4))
    np.testing.assert_allclose(gate.soft_values(), expected, rtol=1e-6)
    out = gate(np.ones((1, 4), "float32"))
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)


def test_hard_gate_straight_through():
    import tensorflow as tf

    gate = ChannelGate(mode="hard")
    gate.build((None, 3))
    gate.logits.assign([-4.0, -2.0, 1.0])
    with tf.GradientTape() as tape:
        values = gate.hard_values()
        loss = tf.reduce_sum(values)
    np.testing.assert_array_equal(values, [0.0, 1.0, 1.0])
    grad = tape.gradient(loss, gate.logits.value)
    soft = gate.soft_values().numpy()
    np.testing.assert_allclose(grad, soft * (1 - soft) / 0.4, rtol=1e-5)


def test_mask_mode_and_set_gate_mode():
    model = _gated_model()
    gate = model.get_layer("gate")
    gate.mask.assign([1, 0, 1, 0, 1, 0, 1, 0])
    x = np.random.RandomState(1).randn(2, 6, 6, 3).astype("float32")
    full = model.predict(x, verbose=0)
    set_gate_mode(model, "mask")
    masked = model.predict(x, verbose=0)
    assert not np.allclose(full, masked)
    set_gate_mode(model, "identity")
    np.testing.assert_allclose(model.predict(x, verbose=0), full, rtol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        set_gate_mode(model, "sometimes")


def test_gate_config_and_save_round_trip(tmp_path):
    model = _gated_model(mode="mask")
    model.get_layer("gate").mask.assign([0, 1] * 4)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    gate = loaded.get_layer("gate")
    assert gate.get_config()["mode"] == "mask"
    np.testing.assert_array_equal(gate.mask.numpy(), [0, 1] * 4)
    x = np.random.RandomState(2).randn(1, 6, 6, 3).astype("float32")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


def test_channel_ops():
    x = np.arange(2 * 1 * 1 * 6, dtype="float32").reshape(2, 1, 1, 6)
    padded = ChannelZeroPad(2, 1)(x)
    assert padded.shape == (2, 1, 1, 9)
    np.testing.assert_array_equal(padded[..., 2:8], x)
    left, right = ChannelSplit(2)(x)
    np.testing.assert_array_equal(right, x[..., 3:])
    shuffled = np.asarray(ChannelShuffle(2)(x))
    np.testing.assert_array_equal(shuffled[0, 0, 0], [0, 3, 1, 4, 2, 5])
