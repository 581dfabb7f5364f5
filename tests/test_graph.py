"""The channel-dependency engine on small hand-written models."""

import keras
import pytest

from pn_tf.graph import ChannelGraph, FlopsModel, GraphAnalysisError
from pn_tf.layers import ChannelGate


def _conv(x, filters, name, k=3):
    return keras.layers.Conv2D(filters, k, padding="same", use_bias=False, name=name)(x)


def test_gate_before_bn_is_rejected():
    inputs = keras.Input((8, 8, 3))
    x = _conv(inputs, 8, "c1")
    x = ChannelGate(name="g")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)  # BN's beta revives pruned channels
    x = _conv(x, 4, "c2")
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(GraphAnalysisError, match="'c2' reads the channels of gate 'g'"):
        ChannelGraph(model)
    assert ChannelGraph(model, strict=False).groups == []


def test_residual_ties_and_concat_offsets():
    inputs = keras.Input((8, 8, 3))
    a = _conv(inputs, 8, "a")
    b = _conv(a, 8, "b")
    s = keras.layers.Add(name="add")([a, b])  # a and b are one space now
    c = _conv(inputs, 4, "c")
    c = keras.layers.ReLU(name="relu_c")(c)
    c = ChannelGate(name="gc")(c)
    cat = keras.layers.Concatenate(name="cat")([s, c])
    y = _conv(cat, 6, "d", k=1)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(y))
    graph = ChannelGraph(model)
    assert [g.gate for g in graph.groups] == ["gc"]
    group = graph.groups[0]
    assert group.producers == ["c"] and group.consumers == ["d"]
    root_a = graph.root(graph.layer_atoms("a")[1][0])
    assert root_a == graph.root(graph.layer_atoms("b")[1][0])
    flops = FlopsModel(graph)
    assert flops.count([2]) == flops.total - 8 * 8 * (3 * 9 * 2 + 1 * 6 * 2)


def test_lambda_channels_are_left_alone_with_a_warning():
    inputs = keras.Input((8, 8, 3))
    x = _conv(inputs, 8, "c1")
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = ChannelGate(name="g")(x)
    x = _conv(x, 4, "c2")
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    graph = ChannelGraph(model, strict=False)
    assert graph.groups == []
    assert any("double" in w for w in graph.warnings)
    with pytest.raises(GraphAnalysisError, match="cannot be pruned"):
        ChannelGraph(model)


def test_gates_tied_by_a_residual_must_be_one_layer():
    inputs = keras.Input((8, 8, 3))
    a = ChannelGate(name="ga")(_conv(inputs, 8, "a"))
    b = ChannelGate(name="gb")(_conv(a, 8, "b"))
    s = keras.layers.Add()([a, b])
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(_conv(s, 4, "c"))))
    with pytest.raises(GraphAnalysisError, match="control the same channels"):
        ChannelGraph(model)
