"""Mixed-precision training: a bfloat16/float16 copy trains, the float32 model gets its weights."""

import dataclasses

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


def test_bfloat16_run_continues_in_float32_when_allowed(tmp_path):
    """A run may move between mixed_bfloat16 and float32 (same optimizer state), on request."""
    from pn_tf.training import ResumeError

    model = resnet_cifar(8, input_shape=(16, 16, 3))
    first = TrainConfig(epochs=1, schedule="constant", learning_rate=0.05, precision="mixed_bfloat16")
    fit_classifier(model, _toy_data(), first, str(tmp_path), "toy", verbose=0)
    longer = dataclasses.replace(first, epochs=3, precision="float32")
    with pytest.raises(ResumeError, match="--allow_precision_change"):
        fit_classifier(model, _toy_data(), longer, str(tmp_path), "toy", verbose=0)
    allowed = dataclasses.replace(longer, allow_precision_change=True)
    history = fit_classifier(model, _toy_data(), allowed, str(tmp_path), "toy", verbose=0)
    assert history.epoch == [1, 2]  # continued after the finished epoch, not from the start
    change = [{"after_epoch": 1, "from": "mixed_bfloat16", "to": "float32"}]
    assert history.precision_changes == change
    assert np.isfinite(history.history["loss"]).all()
    # The record stays with the run: a later resume in float32 keeps it.
    again = fit_classifier(model, _toy_data(), dataclasses.replace(longer, epochs=4),
                           str(tmp_path), "toy", verbose=0)
    assert again.epoch == [3] and again.precision_changes == change


def test_loss_scaled_runs_cannot_change_precision(tmp_path):
    from pn_tf.io import write_json
    from pn_tf.training import ResumeError, check_resume_precision

    write_json(tmp_path / "backup" / "precision.json", {"precision": "mixed_float16"})
    with pytest.raises(ResumeError, match="--precision=mixed_float16") as err:
        check_resume_precision(str(tmp_path), "float32", "toy", allow_change=True)
    assert "--allow_precision_change" not in str(err.value)  # the optimizer state differs
    assert check_resume_precision(str(tmp_path), "mixed_float16", "toy") == []


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="int4")
