"""Mixed-precision training: a bfloat16/float16 copy trains, the float32 model gets its weights."""

import numpy as np
import keras
import pytest

from pn_tf.models.resnet_cifar import resnet_cifar
from pn_tf.training import TrainConfig, fit_classifier, with_precision
from tests.helpers import random_images


def _toy_data(n=64, size=16, seed=0):
    import tensorflow as tf

    x = random_images((size, size, 3), seed=seed, batch=n)
    y = (x.mean(axis=(1, 2, 3)) > 127.5).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16, drop_remainder=True)


def test_twin_computes_in_the_policy_with_the_same_weights():
    model = resnet_cifar(8, input_shape=(16, 16, 3))
    twin = with_precision(model, "mixed_bfloat16")
    assert [layer.name for layer in twin.layers] == [layer.name for layer in model.layers]
    assert twin.get_layer("classifier").compute_dtype == "float32"  # the logits stay float32
    assert twin.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in twin.weights)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = random_images((16, 16, 3), batch=4)
    full, mixed = np.asarray(model(x)), np.asarray(twin(x))
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, full, atol=0.05 * np.abs(full).max() + 1e-3)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_training_updates_the_float32_model(precision, tmp_path):
    model = resnet_cifar(8, input_shape=(16, 16, 3))
    before = [w.copy() for w in model.get_weights()]
    config = TrainConfig(epochs=1, schedule="constant", learning_rate=0.05, precision=precision)
    history = fit_classifier(model, _toy_data(), config, str(tmp_path), "toy", verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.get_layer("stem_conv").compute_dtype == "float32"
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert sum(changed) > len(changed) // 2  # kernels, BN weights and moving statistics moved
    # The backup is the mixed copy's and restores into the float32 model one to one.
    restored = resnet_cifar(8, input_shape=(16, 16, 3))
    restored.load_weights(str(tmp_path / "backup" / "latest.weights.h5"))
    for a, b in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_resuming_in_another_precision_is_refused(tmp_path):
    from pn_tf.training import ResumeError

    model = resnet_cifar(8, input_shape=(16, 16, 3))
    first = TrainConfig(epochs=1, schedule="constant", learning_rate=0.05, precision="mixed_float16")
    fit_classifier(model, _toy_data(), first, str(tmp_path), "toy", verbose=0)
    before = [w.copy() for w in model.get_weights()]
    other = TrainConfig(epochs=2, schedule="constant", learning_rate=0.05, precision="float32")
    with pytest.raises(ResumeError, match="--precision=mixed_float16.*--precision=float32"):
        fit_classifier(model, _toy_data(), other, str(tmp_path), "toy", verbose=0)
    for a, b in zip(before, model.get_weights()):  # refused before anything trained
        np.testing.assert_array_equal(a, b)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="int4")
