"""tools/tfmot_compare.py: the model crosses to tf_keras as a graph spec that rebuilds it exactly.

The TF-MOT side needs its own virtualenv; here the same rebuild runs with Keras 3 layers, which
checks the spec (layers, shared-gate calls, execution order) and the weight hand-over.
"""

import json
import sys

import keras
import numpy as np
import pytest

from pn_tf.data import normalization_kwargs
from pn_tf.layers import ChannelGate
from pn_tf.models import build_model
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
from tfmot_compare import (  # noqa: E402
    GRAPH_FILE, ToolError, graph_spec, layer_arrays, load_twin, refuse_other_baseline)

CIFAR_NORM = normalization_kwargs("cifar10")


def _randomise_batchnorm(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2.0, var.shape)])


@pytest.mark.parametrize("arch", ["resnet56", "mobilenetv2_cifar"])
def test_twin_rebuilt_from_the_spec_gives_the_same_logits(arch):
    model = build_model(arch, input_size=32, num_classes=10, **CIFAR_NORM)
    rng = np.random.default_rng(0)
    _randomise_batchnorm(model, rng)
    spec = graph_spec(model)
    produced = set((name, 0) for name in spec["inputs"])
    for call in spec["calls"]:  # execution order: every input exists before its call
        assert all(tuple(ref) in produced for ref in call["inputs"]), call
        produced.add((call["layer"], call["node"]))

    twin = load_twin(keras, layer_arrays(model), spec)
    assert not any(isinstance(layer, ChannelGate) for layer in twin.layers)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(twin(images)), np.asarray(model(images)), atol=1e-4)


def test_shared_gate_has_one_call_per_use():
    spec = graph_spec(build_model("mobilenetv2_cifar", input_size=32, num_classes=10, **CIFAR_NORM))
    gate_calls = [c for c in spec["calls"] if c["layer"] == "block1_gate"]
    assert [c["node"] for c in gate_calls] == [0, 1]  # after the expansion and the depthwise conv


def test_graph_spec_refuses_what_the_twin_cannot_reproduce():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    dropped = keras.Model(inputs, keras.layers.Dropout(0.5, name="drop")(x))
    with pytest.raises(ToolError, match="drop of class Dropout has no tf_keras twin"):
        graph_spec(dropped)
    gated = keras.Model(inputs, ChannelGate(mode="hard", name="g")(x))
    with pytest.raises(ToolError, match="g is in mode 'hard'"):
        graph_spec(gated)


def test_dump_refuses_another_baseline_over_cached_results(tmp_path):
    (tmp_path / GRAPH_FILE).write_text(json.dumps({"arch": "resnet56", "source": "/r.weights.h5"}))
    refuse_other_baseline(str(tmp_path), "mobilenetv2_cifar", "/m.weights.h5")  # no results yet
    (tmp_path / "seed0.json").write_text("{}")
    refuse_other_baseline(str(tmp_path), "resnet56", "/r.weights.h5")  # the same baseline again
    with pytest.raises(ToolError, match=r"holds results \(seed0.json\) of resnet56"):
        refuse_other_baseline(str(tmp_path), "mobilenetv2_cifar", "/m.weights.h5")
