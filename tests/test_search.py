import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pn_tf.models import build_model, resnet_cifar
from pn_tf.search import PNSearch, project
from tests.conftest import REPO_ROOT


def test_projection_is_orthogonal_and_matches_supplement():
    rng = np.random.RandomState(0)
    g_l = tf.constant(rng.randn(16), tf.float32)
    g_p = tf.constant(rng.randn(16), tf.float32)
    out = project(g_p, g_l).numpy()
    assert abs(np.dot(out, g_l.numpy())) < 1e-5
    gl, gp = g_l.numpy(), g_p.numpy()
    np.testing.assert_allclose(out, gp - gl.dot(gp) / gl.dot(gl) * gl, rtol=1e-5, atol=1e-6)
    # g_P = its projection on g_L + the orthogonal part (supplement C)
    np.testing.assert_allclose(gl.dot(gp) / gl.dot(gl) * gl + out, gp, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(project(g_p, g_l, "off").numpy(), gp)
    agree = tf.abs(g_l)
    np.testing.assert_array_equal(project(agree, g_l * 0 + 1.0, "conflict").numpy(), agree.numpy())
    np.testing.assert_allclose(project(-g_l, g_l, "conflict").numpy(), 0.0, atol=1e-6)


def _search(**kwargs):
    network = resnet_cifar(depth=8, input_shape=(16, 16, 3), num_classes=10)
    search = PNSearch(network, **kwargs)
    search.compile()
    return search


def test_regularizer_zero_under_budget_and_log_above():
    search = _search(target_reduction=0.5)
    t_total = search.cost.prunable
    assert float(search.regularizer(search.p * t_total * 0.9)) == 0.0
    assert float(search.regularizer(search.p * t_total)) == 0.0
    above = float(search.regularizer(search.p * t_total * 1.5))
    assert above == pytest.approx(2.0 * 2.0 * np.log(1.5), rel=1e-5)
    assert search.budget_ratio == pytest.approx(0.5, rel=1e-6)
    heavier = _search(target_reduction=0.5, reg_weight=8.0)  # --flops_reg_weight=8
    assert float(heavier.regularizer(heavier.p * t_total * 1.5)) == pytest.approx(4 * above, rel=1e-5)
    with pytest.raises(ValueError, match="projection"):
        _search(projection="sometimes")
    with pytest.raises(ValueError, match="predictor"):
        _search(predictor="transformer")


def _batches(count, batch=16, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.uniform(0, 255, (count * batch, 16, 16, 3)).astype("float32")
    y = rng.randint(0, 10, count * batch).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


@pytest.mark.parametrize("predictor", ["gru", "none"])
def test_search_changes_only_gates_and_fills_memory(predictor):
    search = _search(predictor=predictor, pn_batch_size=2, memory_capacity=8)
    frozen = [np.array(w) for w in search.network.weights if "logits" not in w.path and "noise" not in w.path]
    gates = [g.numpy().copy() for g in search.gate_logits]
    history = search.fit(_batches(6), epochs=1, verbose=0).history
    after = [np.array(w) for w in search.network.weights if "logits" not in w.path and "noise" not in w.path]
    for before, now in zip(frozen, after):
        np.testing.assert_array_equal(before, now)
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(gates, search.gate_logits))
    assert int(search.memory.count.numpy()) == 3  # one entry per 2 steps
    assert search.pn_start_step == (None if predictor == "none" else 4)  # 2 entries, 2 steps each
    evaluated = search.evaluate(_batches(1), verbose=0, return_dict=True)["cost_ratio"]
    assert search.threshold_cost_ratio == pytest.approx(float(evaluated), rel=1e-6)
    for key in ("cls_loss", "res_loss", "pn_loss", "pn_mae", "cost_ratio", "grad_cos"):
        assert np.isfinite(history[key][-1]), key
    if predictor == "none":
        assert history["pn_loss"][-1] == 0.0


def test_warns_when_the_pn_terms_would_start_late():
    from pn_tf.search.run import late_pn_warning

    # configs/imagenette.flags before 2026-12-01: 10 epochs of 14 steps, PN batch 64.
    warning = late_pn_warning(64 * 2, 140, 64, 2)
    assert "only 12 of the search's 140 steps" in warning and "--pn_batch_size=64" in warning
    assert "only 0 of the search's 20 steps" in late_pn_warning(128, 20, 64, 2)
    assert late_pn_warning(16 * 2, 140, 16, 2) is None  # its batch now: on from step 32
    assert late_pn_warning(None, 10, 64, 2) is None  # DG: no predictor


def test_warns_when_the_search_ends_above_the_budget():
    from pn_tf.search.run import over_budget_warning

    # MobileNetV2 on CIFAR-10, 10 search epochs (docs/results.md): hard gates at 0.67.
    warning = over_budget_warning(0.671, 0.5)
    assert "at 0.671 of the FLOPs, above the 0.500 budget" in warning
    assert "--flops_reg_weight" in warning and "--search_epochs" in warning
    assert over_budget_warning(0.515, 0.5) is None  # within the tolerance
    assert over_budget_warning(0.43, 0.5) is None


def test_real_search_moves_flops_toward_budget(data_dir):
    from pn_tf.data import make_dataset

    network = build_model("resnet56")
    search = PNSearch(network, predictor="gru", target_reduction=0.5, pn_batch_size=4, seed=1)
    # A large gate step so that 10 steps move logits past the threshold (-base).
    search.compile(gate_optimizer=keras.optimizers.AdamW(0.5, weight_decay=1e-2))
    ds = make_dataset("cifar10", "holdout", batch_size=32, training=True, data_dir=data_dir, take=320, seed=0)
    start = search.evaluate(ds.take(2), verbose=0, return_dict=True)["cost_ratio"]
    history = search.fit(ds, epochs=1, verbose=0).history
    end = search.evaluate(ds.take(2), verbose=0, return_dict=True)["cost_ratio"]
    assert history["res_loss"][-1] > 0
    assert end < start - 0.05, (start, end)
    assert end > search.budget_ratio - 0.2, (end, search.budget_ratio)


def test_single_device_and_mirrored_steps_match():
    out = subprocess.run([sys.executable, "tests/scripts/mirrored_search.py", "6"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2]
    assert result["gate_change"] > 1e-3
    assert result["gate_diff"] < 1e-5, result
    assert result["predictor_diff"] < 1e-5, result
    assert result["memory_diff"] < 1e-5, result


def test_softmax_models_use_the_probability_loss():
    from pn_tf import auto
    from pn_tf.losses import outputs_probabilities
    from pn_tf.training import evaluate_accuracy

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    logits = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    logit_model = keras.Model(inputs, logits)
    prob_model = keras.Model(inputs, keras.layers.Softmax()(logits))
    assert not outputs_probabilities(logit_model) and outputs_probabilities(prob_model)
    rng = np.random.RandomState(0)
    # Inputs of order 1 keep the logits' gaps small: a probability that underflows is clipped
    # (at 1e-7) by the probability loss, which would then differ from the logit one.
    x = rng.uniform(0, 1, (16, 8, 8, 3)).astype("float32")
    y = rng.randint(0, 4, 16).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    losses = []
    for model in (logit_model, prob_model):
        search = PNSearch(auto.insert_gates(model), predictor="none", target_reduction=0.3)
        search.compile(gate_optimizer=keras.optimizers.AdamW(1e-2))
        losses.append(search.evaluate(ds, verbose=0, return_dict=True)["loss"])
        evaluate_accuracy(model, ds)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)  # the same cross-entropy
    assert np.isfinite(losses).all()
