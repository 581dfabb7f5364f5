"""Automatic channel-dependency analysis, gate insertion and extraction on arbitrary models."""

import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from pn_tf import auto
from pn_tf.extract import extract_at, set_gate_masks
from pn_tf.graph import ChannelGraph, FlopsModel, count_params
from pn_tf.layers import gate_layers, set_gate_mode
from pn_tf.models import build_model
from tests.conftest import REPO_ROOT
from tests.helpers import random_images, randomize_batchnorm

# keras.applications name -> input size (small, to keep the file fast). Every family at 96 px:
# tests/test_layer_rules.py::test_every_coverage_row_meets_the_bars (slow) and docs/coverage.md.
APPLICATIONS = {
    "MobileNetV2": 64,
    "DenseNet121": 32,
    "EfficientNetB0": 32,
    "ConvNeXtTiny": 32,
}


def _application(name, size):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10,
                                              classifier_activation=None)
    return randomize_batchnorm(model)


def _equivalence(gated, narrow, selection, graph, x):
    set_gate_masks(gated, selection.keep, graph)
    set_gate_mode(gated, "mask")
    reference, pruned = np.asarray(gated(x)), np.asarray(narrow(x))
    set_gate_mode(gated, "identity")
    return reference, float(np.abs(reference - pruned).max())


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_application_prunes_equivalently(name):
    size = APPLICATIONS[name]
    model = _application(name, size)
    x = random_images((size, size, 3), seed=1)
    groups = auto.find_groups(model)
    assert len(groups) > 0
    gated = auto.insert_gates(model, groups)
    assert len(gate_layers(gated)) == len(groups)
    original = np.asarray(model(x))
    assert np.abs(original).max() > 1e-3  # random nets can be all ~0: then nothing is tested
    np.testing.assert_array_equal(original, np.asarray(gated(x)))  # identity gates: same model

    auto.random_gate_logits(gated, seed=2)
    extraction = extract_at(gated, 0.4)
    narrow, selection, graph = extraction.model, extraction.selection, extraction.graph
    assert [g.size for g in graph.groups] == [g.size for g in groups]
    reference, diff = _equivalence(gated, narrow, selection, graph, x)
    assert diff <= 1e-4 * max(1.0, np.abs(reference).max()), diff
    assert abs(selection.reduction - 0.4) < 0.01
    assert FlopsModel(narrow).total == pytest.approx(selection.cost, rel=1e-9)
    assert count_params(narrow) < count_params(model)
    gate_names = {g.name for g in gate_layers(gated)}
    assert not [layer.name for layer in narrow.layers
                if layer.name in gate_names or layer.name.startswith("pn_")]  # no leftovers


def test_lambda_layer_channels_are_left_alone(caplog):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(12, 3, padding="same", name="c2")(x)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="c3")(x)
    x = keras.layers.ReLU(name="r3")(x)
    x = keras.layers.Conv2D(8, 1, name="c4")(x)
    outputs = keras.layers.Dense(10, name="fc")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    with caplog.at_level(logging.WARNING):
        groups = auto.find_groups(model)
    assert any("'double'" in r.getMessage() and "Lambda" in r.getMessage() for r in caplog.records)
    assert sorted(g.producers[0] for g in groups) == ["c1", "c3", "c4"]  # not c2: it feeds the Lambda

    gated = auto.insert_gates(model)
    auto.random_gate_logits(gated, seed=0)
    extraction = extract_at(gated, 0.3)
    narrow, selection, graph = extraction.model, extraction.selection, extraction.graph
    assert narrow.get_layer("c2").kernel.shape == (3, 3, selection.widths[0], 12)
    assert narrow.get_layer("c3").kernel.shape[2] == 12
    x = random_images((16, 16, 3))
    reference, diff = _equivalence(gated, narrow, selection, graph, x)
    assert diff <= 1e-4 * max(1.0, np.abs(reference).max())


ZOO = {"resnet56": 32, "resnet50": 64, "mobilenetv2": 64, "mobilenetv2_cifar": 32,
       "shufflenetv2plus_small": 64}


def _signature(groups):
    return sorted((tuple(g.producers), tuple(sorted(g.consumers)), g.size) for g in groups)


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_zoo_automatic_groups_equal_declared(arch):
    model = build_model(arch, input_size=ZOO[arch], num_classes=10)
    declared = ChannelGraph(model).groups
    stripped = auto.strip_gates(model)
    assert not gate_layers(stripped)
    found = auto.find_groups(stripped, policy="internal")
    assert _signature(found) == _signature(declared)
    if arch in ("mobilenetv2", "resnet56"):  # the gated copy has the same groups, and is exact
        gated = auto.insert_gates(stripped, policy="internal")
        assert _signature(ChannelGraph(gated).groups) == _signature(declared)
        x = random_images((ZOO[arch],) * 2 + (3,))
        np.testing.assert_array_equal(np.asarray(stripped(x)), np.asarray(gated(x)))


def test_policy_options():
    model = _tiny_model()
    everything = auto.analyse(model)
    assert sorted(g.producers[0] for g in everything.groups) == ["c1", "c3", "stem"]
    stream = next(g for g in everything.groups if g.producers[0] == "stem")
    assert stream.producers == ["stem", "c2"] and "add" in stream.carriers
    internal = auto.analyse(model, policy="internal")
    assert [g.producers[0] for g in internal.groups] == ["c1"]
    assert "residual" in internal.excluded["stem"] and "1x1" in internal.excluded["c3"]
    heads = auto.find_groups(model, policy="internal", prune_heads=True)
    assert sorted(g.producers[0] for g in heads) == ["c1", "c3"]
    assert [g.producers[0] for g in auto.find_groups(model, exclude=["c1", "stem"])] == ["c3"]
    with pytest.raises(ValueError, match="policy"):
        auto.find_groups(model, policy="most")
    with pytest.raises(TypeError, match="unknown policy option"):
        auto.find_groups(model, prune_everything=True)


def _tiny_model():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    y = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="c1")(x)
    y = keras.layers.Conv2D(16, 3, padding="same", name="c2")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="fc")(x), name="tiny")


def test_prune_smoke_on_cifar10(data_dir):
    model = _tiny_model()
    pruned, summary = auto.prune(model, "cifar10", target_flops_reduction=0.5, search_epochs=1,
                                 batch_size=64, take=256, data_dir=data_dir, return_summary=True)
    assert summary["groups"] == 3
    # Three groups only: one stem channel costs ~1.3% of this network, so it lands coarsely.
    assert 0.5 <= summary["flops_reduction"] < 0.53
    assert FlopsModel(pruned).total == pytest.approx(summary["pruned_flops"])
    assert pruned.output_shape == (None, 10)
    assert "loss" in summary["search_history"]
    # One 4-step epoch at gate lr 5e-2 cannot close half the MACs' gates: the summary says so.
    assert summary["reached_budget"] is False and summary["threshold_cost_ratio"] > 0.55
    assert any("raise flops_reg_weight" in w for w in summary["warnings"])


def _run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "autoprune.py"), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_cli_json_for_an_application():
    result = _run_cli("--keras_application=MobileNetV2", "--input_size=32",
                      "--target_flops_reduction=0.3", "--json", "--seed=1")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("groups", "flops", "pruned_flops", "flops_reduction", "max_abs_diff", "params",
                "pruned_params", "warnings"):
        assert key in report
    assert report["groups"] > 0
    assert report["max_abs_diff"] <= 1e-4 * max(1.0, report["output_scale"])
    assert abs(report["flops_reduction"] - 0.3) < 0.01


def _cli_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("autoprune_cli", REPO_ROOT / "tools" / "autoprune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_errors(tmp_path, capsys):
    main = _cli_main()
    assert main(["--keras_application=NoSuchNet", "--input_size=32"]) != 0
    assert "NoSuchNet" in capsys.readouterr().err
    assert main([f"--model={tmp_path / 'absent.keras'}", "--dataset=cifar10",
                 f"--output={tmp_path / 'out.keras'}"]) != 0
    assert "does not exist" in capsys.readouterr().err
    assert main(["--keras_application=ResNet50", "--target_flops_reduction=1.5"]) != 0
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK but not really a zip archive")
    assert main([f"--model={corrupt}", "--dataset=cifar10", f"--output={tmp_path / 'out.keras'}"]) == 2
    assert "not a valid .keras file" in capsys.readouterr().err
    (tmp_path / "one_class" / "cats").mkdir(parents=True)
    assert main([f"--model={corrupt}", f"--image_dir={tmp_path / 'one_class'}",
                 f"--output={tmp_path / 'out.keras'}"]) == 2
    assert "at least two class sub-folders" in capsys.readouterr().err


def test_pn_tf_exports_prune_lazily():
    code = ("import sys, pn_tf; assert 'tensorflow' not in sys.modules; "
            "assert pn_tf.prune.__module__ == 'pn_tf.auto'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=300)


@pytest.mark.slow
def test_cli_prunes_a_saved_model_on_an_image_folder(tmp_path):
    rng = np.random.RandomState(0)
    for label in ("cats", "dogs"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(12):
            keras.utils.save_img(tmp_path / "images" / label / f"{i}.png",
                                 rng.randint(0, 255, (40, 40, 3)).astype("uint8"))
    source = tmp_path / "tiny.keras"
    _tiny_model().save(source)
    output = tmp_path / "tiny_pruned.keras"
    result = _run_cli(f"--model={source}", f"--image_dir={tmp_path / 'images'}",
                      "--target_flops_reduction=0.4", f"--output={output}", "--search_epochs=1",
                      "--batch_size=8", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    pruned = keras.saving.load_model(output)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert FlopsModel(pruned).total == pytest.approx(report["pruned_flops"])
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # atomic save left no debris
