"""The models users bring: Sequential, nested, 1-D, transposed, normalized, shared, keras.ops,
and the rule registry that says what each layer type means for channels."""

import io
import json
import logging
import sys

import keras
import numpy as np
import pytest

from pn_tf import auto
from pn_tf.coverage.check import check_model, randomize_batchnorm
from pn_tf.coverage.models import PATTERNS, autoencoder_conv1d, groupnorm_cnn, shared_block
from pn_tf.extract import extract_at
from pn_tf.graph import ChannelGraph, FlopsModel, GraphAnalysisError, flatten, rules
from pn_tf.layers import gate_layers

# Pattern -> also convert the pruned model to TFLite here (the others: tools/coverage.py).
FAST_TFLITE = {"kws_conv1d", "autoencoder_conv1d", "unet"}


def _pattern(name):
    keras.utils.set_random_seed(0)
    return randomize_batchnorm(PATTERNS[name][0]())  # 96 px images, 96-frame 1-D inputs


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_user_pattern_prunes_equivalently(name):
    row = check_model(_pattern(name), target=0.4, seed=1, tflite=name in FAST_TFLITE)
    assert row["groups"] > 0
    assert row["identity_max_abs_diff"] == 0.0  # identity gates: the same model, bit for bit
    assert row["max_abs_diff"] <= 1e-4 * max(1.0, row["output_scale"]), row
    assert row["output_scale"] > 1e-3  # random nets can be all ~0: then nothing is tested
    assert row["landing_error"] <= 0.01 and row["flops_reduction"] >= 0.4
    assert row["pruned_flops_recount"] == pytest.approx(row["pruned_flops"], rel=1e-9)
    assert row["opaque"] == [] and row["opaque_custom"] == []
    assert row["pruned_params"] < row["params"]
    if name in ("nested_mobilenetv2", "sequential_cnn", "kws_conv1d"):
        assert row["prunable_share"] >= 0.9
    if name in FAST_TFLITE:
        assert row["tflite"], row.get("tflite_error")
        assert row["tflite_max_abs_diff"] <= 1e-4 * max(1.0, row["output_scale"])
        assert row["tflite_macs"] == row["pruned_flops"]  # MACs recounted from the TFLite graph


def test_flops_of_1d_and_transposed_convolutions():
    model = autoencoder_conv1d(size=96, channels=8)
    flops = FlopsModel(model)
    # Conv1D: k * C_in * C_out * T_out; Conv1DTranspose: k * C_in * C_out * T_in.
    expected = [5 * 8 * 32 * 48, 5 * 32 * 64 * 24, 5 * 64 * 32 * 24, 5 * 32 * 32 * 48, 3 * 32 * 8 * 96]
    assert [m for _, _, m in flops.table()] == expected
    assert flops.total == sum(expected)


def test_keras_ops_nodes_are_understood():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = x * (keras.ops.relu6(x + 3.0) / 6.0)  # MobileNetV3's h-swish, as keras.ops nodes
    x = keras.layers.Conv2D(6, 1, name="c2")(x * np.arange(1, 9, dtype="float32"))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    graph = ChannelGraph(model)
    assert graph.opaque_layers == []
    (group,) = auto.find_groups(model)
    assert group.producers == ["c1"] and group.consumers == ["c2"]
    gated = auto.insert_gates(model)
    auto.random_gate_logits(gated, seed=3)
    extraction = extract_at(gated, 0.3)
    narrow, selection = extraction.model, extraction.selection
    constant = [n for n in narrow._nodes_by_depth[2] if type(n.operation).__name__ == "Multiply"]
    assert constant and constant[0].arguments.args[1].shape == (selection.widths[0],)  # sliced


def test_layer_normalization_couples_its_channels_with_a_reason(caplog):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="c1")(inputs)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.Dense(32, activation="gelu", name="mlp1")(x)  # a dense on the channel axis
    x = keras.layers.Dense(16, name="mlp2")(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    with caplog.at_level(logging.WARNING):
        analysis = auto.analyse(model)
    assert not [r for r in caplog.records if "opaque" in r.getMessage()]
    graph = analysis.graph
    reason = graph.fixed_reason(graph.layer_atoms("c1")[1][0])
    assert "LayerNormalization 'ln'" in reason and "across its channels" in reason
    assert sorted(g.producers[0] for g in analysis.groups) == ["mlp1", "mlp2"]


def test_group_normalization_removes_whole_groups():
    keras.utils.set_random_seed(0)
    model = groupnorm_cnn(size=32)
    graph = ChannelGraph(model)
    gated = auto.insert_gates(model)
    assert [g.granule for g in ChannelGraph(gated).groups] == [2, 2, 4, 4]
    auto.random_gate_logits(gated, seed=0)
    extraction = extract_at(gated, 0.5)
    narrow, selection, gated_graph = extraction.model, extraction.selection, extraction.graph
    for group, keep in zip(gated_graph.groups, selection.keep):
        runs = keep.reshape(-1, group.granule)
        assert np.all(runs.all(axis=1) | ~runs.any(axis=1))  # each group kept or removed whole
    norms = [layer for layer in narrow.layers if isinstance(layer, keras.layers.GroupNormalization)]
    assert [n.groups for n in norms] == [w // g.granule for w, g in zip(selection.widths, gated_graph.groups)]
    assert graph.opaque_layers == []


def test_one_group_normalization_couples_all_channels():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, name="c1")(inputs)
    x = keras.layers.GroupNormalization(1, name="gn")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(x))
    graph = ChannelGraph(model)
    assert "one group" in graph.fixed_reason(graph.layer_atoms("c1")[1][0])


def test_shared_submodel_ties_both_calls():
    model = shared_block(size=32)
    gated = auto.insert_gates(model)
    graph = ChannelGraph(gated)
    conv_a = next(g for g in graph.groups if g.producers == ["shared_conv_a"])
    assert conv_a.consumers == ["shared_conv_b"]
    assert len(conv_a.atoms) == 2  # the outputs of both calls are one space
    assert len(gated.get_layer(conv_a.gate)._inbound_nodes) == 2  # one gate, after each call


def test_shared_layer_on_mismatched_channels_is_left_alone_with_a_reason(caplog):
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(8, 3, padding="same", name="b")(inputs)
    c = keras.layers.Conv2D(16, 3, padding="same", name="c")(inputs)
    shared = keras.layers.Conv2D(4, 1, name="shared")
    y = keras.layers.Add()([shared(keras.layers.Concatenate()([a, b])), shared(c)])
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(y))
    with caplog.at_level(logging.WARNING):
        graph = ChannelGraph(model)
    assert "shared layer 'shared'" in graph.fixed_reason(graph.layer_atoms("c")[1][0])
    assert any("shared layer 'shared'" in r.getMessage() for r in caplog.records)


class ChannelScale(keras.layers.Layer):
    """A user's layer: one learned scale per channel."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


def _scaled_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(12, 3, padding="same", name="c1")(inputs)
    x = keras.layers.ReLU(name="r1")(x)
    scale = ChannelScale(name="scale")
    x = scale(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="c2")(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    scale.scale.assign(np.linspace(0.5, 2.0, 12).astype("float32"))
    return model


def test_custom_layer_needs_a_rule_and_then_prunes(caplog):
    model = _scaled_model()
    with caplog.at_level(logging.WARNING):
        groups = auto.find_groups(model)
    # Without a rule it is unrolled (pn_tf.graph.replay): its weight becomes a Parameter layer on
    # c1's channels, so c1 prunes and no warning is needed.
    assert not [r for r in caplog.records if "'scale'" in r.getMessage()]
    assert [g.producers[0] for g in groups] == ["c1", "c2"]
    assert "scale_scale" in groups[0].producers
    # A registered rule takes precedence: the layer is kept whole and sliced by the rule.
    rules.register_rule(ChannelScale, rules.Carry(weights=("scale",), keeps_zero=True))
    try:
        groups = auto.find_groups(model)
        assert [g.producers[0] for g in groups] == ["c1", "c2"]
        row = check_model(model, target=0.3, tflite=False)
        assert row["max_abs_diff"] <= 1e-5 * max(1.0, row["output_scale"]) and row["opaque_custom"] == []
        gated = auto.insert_gates(model)
        auto.random_gate_logits(gated, seed=0)
        extraction = extract_at(gated, 0.3)
        narrow, selection = extraction.model, extraction.selection
        kept = selection.widths[[g.producers[0] for g in ChannelGraph(gated).groups].index("c1")]
        assert narrow.get_layer("scale").scale.shape == (kept,)
    finally:
        rules.unregister_rule(ChannelScale)


def test_subclasses_of_keras_layers_inherit_their_rule():
    class MyConv(keras.layers.Conv2D):
        pass

    assert isinstance(rules.rule_for(MyConv(4, 3)), rules.Convolution)
    with pytest.raises(TypeError, match="ChannelRule"):
        rules.register_rule(MyConv, object())


def test_sequential_and_nested_models_are_flattened_with_their_names():
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False,
                                              weights=None)
    inputs = keras.Input((32, 32, 3))
    features = backbone(inputs, training=False)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(features)))
    flat = flatten(model)
    inner = {layer.name for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)}
    assert inner <= {layer.name for layer in flat.layers}
    x = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    randomize_batchnorm(model)
    # The backbone was called with training=False: its BN stays in inference mode, flat too.
    np.testing.assert_array_equal(np.asarray(model(x, training=True)), np.asarray(flat(x, training=True)))
    unbuilt = keras.Sequential([keras.layers.Conv2D(4, 3)])
    with pytest.raises(GraphAnalysisError, match="not built"):
        ChannelGraph(unbuilt)


def test_name_collisions_between_submodels_are_renamed(caplog):
    def block(name):
        inputs = keras.Input((8, 8, 4))
        return keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs), name=name)

    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, block("second")(block("first")(inputs)))
    with caplog.at_level(logging.WARNING):
        flat = flatten(model)
    assert sorted(layer.name for layer in flat.layers[1:]) == ["conv", "second_conv"]
    assert any("second_conv" in r.getMessage() for r in caplog.records)
    x = np.random.RandomState(0).randn(2, 8, 8, 4).astype("float32")
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(flat(x)))


def test_subclassed_model_gets_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(GraphAnalysisError, match="subclassed"):
        ChannelGraph(net)


@pytest.mark.parametrize("name", ["nested_mobilenetv2", "sequential_cnn"])
def test_prune_searches_nested_and_sequential_models(name, data_dir):
    keras.utils.set_random_seed(0)
    model = PATTERNS[name][0](size=32)
    pruned, summary = auto.prune(model, "cifar10", target_flops_reduction=0.4, search_epochs=1,
                                 batch_size=32, take=64, data_dir=data_dir, return_summary=True)
    assert summary["groups"] > 0 and "loss" in summary["search_history"]
    assert 0.4 <= summary["flops_reduction"] <= 0.41
    assert FlopsModel(pruned).total == pytest.approx(summary["pruned_flops"])
    assert not gate_layers(pruned) and pruned.output_shape == (None, 10)
    inner = {layer.name for layer in flatten(model).layers
             if not isinstance(layer, keras.layers.InputLayer)}
    assert inner <= {layer.name for layer in pruned.layers}  # the user's layer names, flat


def _coverage_tool():
    import importlib.util

    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("coverage_tool", REPO_ROOT / "tools" / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coverage_tool_rows_and_table(tmp_path, capsys):
    tool = _coverage_tool()
    page = tmp_path / "coverage.md"
    assert tool.main(["--only=autoencoder_conv1d,shared_block", f"--markdown={page}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["row"] for r in report["rows"]] == ["autoencoder_conv1d", "shared_block"]
    assert all(r["failed"] == [] and r["tflite"] for r in report["rows"])
    text = page.read_text()
    assert "Generated by `tools/coverage.py`" in text and "| shared_block |" in text
    assert tool.main(["--only=NoSuchNet"]) == 2
    assert "NoSuchNet" in capsys.readouterr().err


def _table_cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


# Rows known to miss a bar (none since keras-hub's Swin and MiT unroll: a call traced at a known
# batch size, reshapes made batch-free in passes, matmul counted). A row entering this set must
# say why in docs/autoprune.md.
KNOWN_MISSES = set()


def test_docs_coverage_table_is_the_tools_output():
    """Every row is in docs/coverage.md, and one (the smallest model) is remeasured here."""
    from tests.conftest import REPO_ROOT

    tool = _coverage_tool()
    text = (REPO_ROOT / "docs" / "coverage.md").read_text()
    assert "Generated by `tools/coverage.py`" in text
    for name, _, _ in tool.rows_to_run():
        assert f"| {name} |" in text
    [line] = [line for line in text.splitlines() if line.startswith("Rows that miss a bar:")]
    names = [name for name, _, _ in tool.rows_to_run()]
    missing = {name for name in names if f" {name}: " in line}
    assert line == "Rows that miss a bar: none." or missing == KNOWN_MISSES, line[:300]
    # The table's defaults (96 frames, a 0.4 cut, seed 0) on autoencoder_conv1d, without the
    # TFLite conversion (that cell is left out, and so are the float differences, which may
    # move in their last digits on another CPU): the other cells must be the committed ones.
    name = "autoencoder_conv1d"
    rows = tool.measure(only=name, tflite=False, progress=io.StringIO())
    [fresh] = [line for line in tool.markdown(rows, "", 0.4).splitlines() if line.startswith(f"| {name} |")]
    [committed] = [line for line in text.splitlines() if line.startswith(f"| {name} |")]
    header = _table_cells(next(line for line in text.splitlines() if line.startswith("| model |")))
    deterministic = ["model", "what", "groups", "prunable MACs", "opaque", "identity", "FLOPs cut",
                     "params"]
    pick = [header.index(column) for column in deterministic]
    fresh, committed = _table_cells(fresh), _table_cells(committed)
    assert [fresh[i] for i in pick] == [committed[i] for i in pick], (fresh, committed)


@pytest.mark.slow
def test_every_coverage_row_meets_the_bars():
    rows = _coverage_tool().measure(tflite=True)
    assert [(r["row"], r["failed"]) for r in rows if r["failed"] and r["row"] not in KNOWN_MISSES] == []
    assert {r["row"] for r in rows if r["failed"]} <= KNOWN_MISSES


def test_reductions_reshapes_transposes_and_pads_in_keras_ops(caplog):
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    s = keras.ops.mean(x, axis=(1, 2), keepdims=True)  # a squeeze-excite written with keras.ops
    s = L.Conv2D(16, 1, activation="sigmoid", name="se")(L.Conv2D(4, 1, activation="relu", name="se0")(s))
    x = keras.ops.pad(x * s, [[0, 0], [1, 1], [1, 1], [0, 0]])
    x = keras.ops.cast(keras.ops.relu(L.Conv2D(24, 3, name="c2")(x)), "float32")
    x = keras.ops.image.resize(L.Permute((2, 1, 3))(x), (8, 8))
    v = keras.ops.squeeze(keras.ops.reshape(keras.ops.mean(x, axis=(1, 2)), (-1, 1, 1, 24)), axis=1)
    y = L.Flatten()(L.Conv1D(12, 1, name="c3")(v))
    recurrent = L.LSTM(5, name="lstm")(L.RepeatVector(3)(y))
    model = keras.Model(inputs, L.Dense(10)(L.Concatenate()([y, recurrent])))
    with caplog.at_level(logging.WARNING):
        row = check_model(model, 0.3, tflite=False)
    assert row["opaque"] == [] and row["groups"] == 3  # c1 (tied to se), se0, c2; not c3: it feeds the LSTM
    assert row["max_abs_diff"] <= 1e-4 * max(1.0, row["output_scale"])
    assert any("'lstm' (LSTM)" in w and "recurrent" in w for w in row["warnings"])


def test_channels_first_layers_are_left_alone_with_a_reason():
    model = keras.Sequential([keras.Input((3, 16, 16)), keras.layers.Conv2D(8, 3, data_format="channels_first"),
                              keras.layers.Conv2D(4, 3, data_format="channels_first"), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    graph = ChannelGraph(model)
    assert any("channels_first" in w for w in graph.warnings)
    with pytest.raises(ValueError, match="no prunable channel groups"):
        check_model(model, 0.2, tflite=False)


def test_keras_op_classes_come_from_the_public_functions():
    x = keras.Input((4, 4, 3))
    y = keras.ops.softmax(keras.ops.relu(x + 3.0))
    model = keras.Model(x, y)
    ops = [op for op in model.operations if not isinstance(op, keras.layers.InputLayer)]
    assert [type(op) for op in ops] == [rules.keras_op_class(n) for n in ("add", "relu", "softmax")]
    assert isinstance(rules.rule_for(ops[0]), rules.ElementwiseOp)
    assert isinstance(rules.rule_for(ops[2]), rules.Couple)
    assert rules.keras_op_class("no_such_op") is None


def test_a_keras_without_an_op_or_an_application_layer_warns_and_goes_on(monkeypatch, caplog):
    """What Keras moved is named in one warning; its nodes are then simply opaque."""
    monkeypatch.setattr(rules, "_OPS_ELEMENTWISE", rules._OPS_ELEMENTWISE + ("renamed_op",))
    monkeypatch.setitem(rules._OP_CALLS, "clip", lambda f, x, y: f(x))  # a changed signature
    with caplog.at_level(logging.WARNING, logger="pn_tf.graph.rules"):
        classes = rules._probe_op_classes()
    assert "renamed_op" not in classes and "clip" not in classes and "add" in classes
    [record] = [r for r in caplog.records if "keras.ops" in r.getMessage()]
    assert "keras.ops.renamed_op (not in this Keras)" in record.getMessage()
    assert "keras.ops.clip (TypeError" in record.getMessage()

    caplog.clear()
    monkeypatch.setattr(rules, "_RULES", dict(rules._RULES))  # the real registry stays as it is
    for family in ("convnext", "inception_resnet_v2"):  # None in sys.modules: import fails
        monkeypatch.setitem(sys.modules, f"keras.src.applications.{family}", None)
    with caplog.at_level(logging.WARNING, logger="pn_tf.graph.rules"):
        rules._register_applications()
    messages = [r.getMessage() for r in caplog.records]
    assert any("keras.src.applications.convnext.LayerScale" in m and "opaque" in m for m in messages)
    assert any("keras.src.applications.inception_resnet_v2.CustomScaleLayer" in m for m in messages)
