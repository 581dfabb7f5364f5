import json

import numpy as np
import keras
import pytest

from pn_tf.graph import ChannelGraph
from pn_tf.layers import gate_layers, set_gate_mode
from pn_tf.models import build_model
from pn_tf.auto import strip_gates
from tests.helpers import random_images, save_load

# arch -> (number of gated groups, small input size for tests)
GATES = {
    "resnet56": (27, 32),
    "mobilenetv2_cifar": (17, 32),
    "resnet34": (16, 64),
    "resnet50": (32, 64),
    "resnet101": (66, 64),
    "mobilenetv2": (17, 64),
    "shufflenetv2plus_large": (22, 64),
}


@pytest.mark.parametrize("arch", sorted(GATES))
def test_shapes_and_gate_groups(arch):
    count, size = GATES[arch]
    model = build_model(arch, input_size=size, num_classes=7)
    assert model.output.shape == (None, 7)
    assert model(random_images((size, size, 3))).shape == (2, 7)
    graph = ChannelGraph(model)
    assert len(graph.groups) == count == len(gate_layers(model))
    assert [g.gate for g in graph.groups] == [g.name for g in gate_layers(model)]
    for group in graph.groups:
        assert group.producers and group.consumers, group


@pytest.mark.parametrize("arch", ["resnet56", "mobilenetv2_cifar", "resnet50", "mobilenetv2"])
def test_identity_gates_compute_the_unpruned_network(arch):
    size = GATES[arch][1]
    model = build_model(arch, input_size=size, num_classes=5)
    x = random_images((size, size, 3), seed=1)
    np.testing.assert_array_equal(model(x), strip_gates(model)(x))
    set_gate_mode(model, "mask")  # all-ones masks: same network
    np.testing.assert_allclose(model(x), strip_gates(model)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet56", "mobilenetv2_cifar"])
def test_save_load_round_trip(arch, tmp_path):
    model = build_model(arch)
    set_gate_mode(model, "soft")
    for gate in gate_layers(model):
        gate.noise.assign(np.random.RandomState(0).randn(gate.channels).astype("float32"))
    x = random_images((32, 32, 3), seed=2)
    loaded = save_load(model, tmp_path)
    assert [g.mode for g in gate_layers(loaded)] == ["soft"] * len(gate_layers(model))
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    as_json = lambda m: json.loads(json.dumps(m.get_config()))  # tuples vs lists
    assert as_json(loaded) == as_json(model)


def test_width_override_validation():
    narrow = build_model("resnet56", widths=[8] * 27)
    assert narrow.get_layer("stage1_block1_1_conv").filters == 8
    with pytest.raises(ValueError, match="one entry per prunable group"):
        build_model("resnet56", widths=[8] * 3)
    with pytest.raises(ValueError, match="bad"):
        build_model("mobilenetv2_cifar", widths=[0] * 17)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet57")
    with pytest.raises(ValueError, match="depth"):
        from pn_tf.models import resnet

        resnet(depth=42)


def test_resnet_cifar_stage_widths():
    from pn_tf.graph import FlopsModel
    from pn_tf.models import resnet_cifar

    narrow = resnet_cifar(56, stage_widths=(8, 16, 32))
    assert narrow.get_layer("stage3_block9_2_conv").kernel.shape[-1] == 32
    ratio = FlopsModel(narrow).total / FlopsModel(resnet_cifar(56)).total
    assert abs(ratio - 0.25) < 0.01
    with pytest.raises(ValueError, match="stage_widths"):
        resnet_cifar(56, stage_widths=(16, 32))
