"""keras-hub's image models (small configurations, random weights, nothing downloaded) through the
channel analysis, gate insertion and extraction: pn_tf.coverage.check.check_model's bars at a 30%
FLOPs cut. keras-hub is an optional extra (pip install -e ".[hub]"); without it these are skipped."""

import logging
import subprocess
import sys

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

from pn_tf.auto import analyse  # noqa: E402
from pn_tf.coverage.check import check_model, randomize_batchnorm, sample_inputs  # noqa: E402
from pn_tf.coverage.models import HUB  # noqa: E402

FAST = ["hub_vit_classifier", "hub_dinov2"]
# Swin and MiT are left out: their blocks stay opaque (see test_swin_and_mit_say_why).
SLOW = ["hub_mobilenetv3", "hub_hgnetv2", "hub_vit", "hub_deit"]


def _row(name, **kwargs):
    keras.utils.set_random_seed(0)
    build, _, share = HUB[name]
    model = randomize_batchnorm(build(96))
    return model, check_model(model, target=0.3, **kwargs), share


def _assert_bars(row, share):
    assert row["opaque"] == [] and row["opaque_custom"] == [], (row["opaque"], row["opaque_custom"])
    assert row["prunable_share"] >= share, row["prunable_share"]
    assert row["identity_max_abs_diff"] == 0.0
    assert row["equivalent"] and row["max_abs_diff"] <= 1e-4 * max(1.0, row["output_scale"])
    assert abs(row["flops_reduction"] - 0.3) <= 0.01
    assert row["tflite"], row.get("tflite_error")
    assert row["tflite_macs"] == pytest.approx(row["pruned_flops"], abs=0.5)
    assert not [w for w in row["warnings"] if "not counted" in w], row["warnings"]


@pytest.mark.parametrize("name", FAST)
def test_keras_hub_model_prunes(name):
    _, row, share = _row(name)
    _assert_bars(row, share)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_keras_hub_model_prunes_slow(name):
    _, row, share = _row(name)
    _assert_bars(row, share)


def test_vit_heads_and_class_token_prune_and_reload_without_keras_hub(tmp_path):
    """The pruned keras-hub ViTImageClassifier has fewer heads (num_heads says so), its class token
    and position embeddings are trainable Parameter weights sliced with the residual stream's
    channels where it is pruned, and its .keras file loads in a process where importing keras_hub fails."""
    from pn_tf.auto import insert_gates, random_gate_logits
    from pn_tf.extract import extract_at
    from pn_tf.layers import Parameter

    keras.utils.set_random_seed(0)
    model = HUB["hub_vit_classifier"][0](96)
    analysis = analyse(model)
    assert analysis.graph.opaque_layers == []
    gated = insert_gates(model, analysis.groups)
    parameters = [layer for layer in gated.layers if isinstance(layer, Parameter)]
    assert any(p.trainable_weights for p in parameters)  # the class token stays a trainable weight
    random_gate_logits(gated, seed=1)
    x = sample_inputs(model)
    narrow = extract_at(gated, 0.3, images=x).model
    heads = [layer.num_heads for layer in narrow.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
    assert heads and min(heads) < 4

    path = tmp_path / "pruned.keras"
    narrow.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(narrow(x)))
    (tmp_path / "keras_hub").mkdir()
    (tmp_path / "keras_hub" / "__init__.py").write_text("raise ImportError('keras_hub must not be imported')\n")
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import numpy as np, keras\n"
        "import pn_tf.layers  # registers pn-tf's Parameter layer\n"
        "m = keras.models.load_model(sys.argv[1])\n"
        "assert 'keras_hub' not in sys.modules or not hasattr(sys.modules['keras_hub'], 'models')\n"
        "y = np.asarray(m(np.load(sys.argv[2])))\n"
        "assert np.allclose(y, np.load(sys.argv[3]), rtol=1e-5, atol=1e-5), np.abs(y - np.load(sys.argv[3])).max()\n"
        "print('loaded', len(m.layers))\n")
    out = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         check=False, cwd="/", capture_output=True, text=True, timeout=240,
                         env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1]),
                              "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and "loaded" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("row", ["hub_swin", "hub_mit"])
def test_swin_and_mit_unroll(row):
    """Swin's and MiT's blocks compute window and sequence shapes from the batch size: they are
    traced at a known one, their reshapes made batch-free; nothing stays opaque, every MAC is
    counted (attention's matmuls included), and the MLPs hold at least half of them."""
    from pn_tf.graph import FlopsModel

    keras.utils.set_random_seed(0)
    model = randomize_batchnorm(HUB[row][0](96))  # the size (at 64 px Swin's share is 43%)
    analysis = analyse(model)
    assert analysis.graph.opaque_layers == [] and analysis.graph.uncounted_layers == []
    assert len(analysis.groups) >= 2
    assert any(kind == "matmul" for _, kind, _ in FlopsModel(analysis.graph).table())
    result = check_model(model, target=0.3, tflite=False)
    assert result["prunable_share"] >= 0.5 and result["identity_max_abs_diff"] == 0.0
    assert result["equivalent"] and abs(result["flops_reduction"] - 0.3) < 0.01


@pytest.mark.slow
def test_saved_image_classifier_with_preprocessor_goes_through_the_pipeline(tmp_path):
    """`pn-tf --model=classifier.keras` on a saved keras-hub ViTImageClassifier with its
    preprocessor: keras_hub is imported to load it, the preprocessor is named (it runs outside
    the graph), and every stage finishes."""
    import keras_hub

    from pn_tf.coverage.models import _vit
    from tests.conftest import REPO_ROOT
    from tests.test_own_model import make_folder

    keras.utils.set_random_seed(0)
    converter = keras_hub.layers.ViTImageConverter(image_size=(96, 96), scale=1 / 127.5, offset=-1.0)
    model = keras_hub.models.ViTImageClassifier(
        backbone=_vit(96), num_classes=3,
        preprocessor=keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter))
    model.save(tmp_path / "classifier.keras")
    images = make_folder(tmp_path / "images", per_class=12, broken=False)
    out = subprocess.run([sys.executable, "-m", "pn_tf.train", f"--model={tmp_path / 'classifier.keras'}",
                          f"--image_dir={images}", f"--workdir={tmp_path / 'run'}", "--search_epochs=1",
                          "--finetune_epochs=1", "--tflite=float32", "--target_flops_reduction=0.3",
                          "--input_range=-1_1", "--verbose=0"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ViTImageClassifierPreprocessor runs outside its graph" in out.stdout
    assert (tmp_path / "run" / "report.json").exists()
