"""tools/profile_layers.py: the network split into units that reproduce it exactly."""

import sys

import keras
import numpy as np
import pytest

from pn_tf.extract import extract_model
from pn_tf.graph import ChannelGraph
from pn_tf.latency.units import convert, split_units, unit_model
from pn_tf.models import build_model
from pn_tf.tflite.inspection import delegation
from tests.conftest import REPO_ROOT
from tests.helpers import random_images

sys.path.insert(0, str(REPO_ROOT / "tools"))
from profile_layers import gated_layers  # noqa: E402


def test_units_cover_the_network_and_reproduce_its_tensors(tmp_path):
    gated = build_model("shufflenetv2plus_small", input_size=64, num_classes=10, dropout=0.0)
    graph = ChannelGraph(gated)
    plain = extract_model(gated, [np.ones(g.size, bool) for g in graph.groups], graph)
    units = split_units(plain)
    nodes = [id(node) for unit in units for node in unit]
    calls = {id(node) for depth_nodes in plain._nodes_by_depth.values() for node in depth_nodes
             if not node.is_input}
    assert len(nodes) == len(set(nodes)) and set(nodes) == calls  # every layer call, once
    # Conv + BN + activation (+ the stripped gate) is one unit, as the converter fuses them.
    first = next(u for u in units if isinstance(u[0].operation, keras.layers.Conv2D))
    assert isinstance([n.operation for n in first][1], keras.layers.BatchNormalization)

    tensors = [t for unit in units for node in unit
               for t in list(node.input_tensors) + list(node.output_tensors)]
    unique = list({id(t): t for t in tensors}.values())
    probe = keras.Model(plain.inputs, unique)
    values = dict(zip((id(t) for t in unique), probe([random_images((64, 64, 3), seed=1, batch=1)])))
    for unit in units:
        model = unit_model(unit)
        inputs = list({id(t): values[id(t)] for t in unit[0].input_tensors}.values())
        outs = keras.tree.flatten(model(inputs if len(inputs) > 1 else inputs[0]))
        assert len(outs) == len(unit[-1].output_tensors)
        for out, tensor in zip(outs, unit[-1].output_tensors):
            np.testing.assert_allclose(np.asarray(out), np.asarray(values[id(tensor)]),
                                       rtol=1e-5, atol=1e-5)
    names = gated_layers(gated, graph)
    assert any(name.endswith("gate") or "conv" in name for name in names)
    concat = next(u for u in units if isinstance(u[0].operation, keras.layers.Concatenate))
    path = convert(unit_model(concat), str(tmp_path / "concat.tflite"))
    assert (tmp_path / "concat.tflite").stat().st_size > 0 and path.endswith(".tflite")
    # Weights are frozen into constants, so XNNPACK takes the conv as in an exported model.
    report = delegation(convert(unit_model(first), str(tmp_path / "conv.tflite")))
    assert report["partitions"] == 1 and not report["not_delegated"], report


def test_a_zero_pad_is_timed_with_the_conv_it_feeds():
    model = build_model("mobilenetv2", input_size=64, num_classes=10)
    units = split_units(model)
    padded = [u for u in units if isinstance(u[0].operation, keras.layers.ZeroPadding2D)]
    assert padded and all(isinstance(u[1].operation, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
                          for u in padded)


@pytest.mark.slow
def test_profile_end_to_end_resnet56():
    from profile_layers import format_report, profile

    report = profile("resnet56", runs=3, warmup=1)
    assert abs(report["flops_reduction"] - 0.5) < 0.02
    assert report["whole_model_ms"] > 0 and report["whole_pruned_ms"] > 0
    gated = report["by_class"]["gated"]
    assert abs(gated["pruned_macs"] / gated["macs"] - 0.5) < 0.02  # all pruned MACs are gated
    assert report["by_class"]["fixed"]["pruned_macs"] == report["by_class"]["fixed"]["macs"]
    assert sum(r["macs"] for r in report["units"]) == 125_485_696
    assert "fixed (touching no PN group)" in format_report(report, 3)
