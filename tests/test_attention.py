"""Transformers: MultiHeadAttention heads pruned whole, MLP widths as channels, EinsumDense, and
their MACs (QK^T and AV included) against hand counts and the TFLite graph's own count."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pn_tf import auto
from pn_tf.coverage.models import vit
from pn_tf.extract import extract_at
from pn_tf.extract.surgery import copy_weights
from pn_tf.graph import ChannelGraph, FlopsModel
from pn_tf.layers import ChannelGate, HeadGatedAttention, gate_layers, set_gate_mode

TOKENS, WIDTH, KEY_DIM = 64, 64, 16


def _vit():
    keras.utils.set_random_seed(0)
    return vit(size=32)  # patch 4: 8 x 8 = 64 tokens of width 64, 4 heads of 16, MLP 256


def _vit_macs(heads, mlp):
    """Hand count of the ViT's MACs with ``heads[b]`` heads and ``mlp[b]`` MLP units in block b."""
    patches = TOKENS * WIDTH * 4 * 4 * 3
    total = patches + WIDTH * 10  # and the head
    for h, m in zip(heads, mlp):
        projections = 4 * TOKENS * WIDTH * h * KEY_DIM  # query, key, value, output
        products = 2 * h * TOKENS * TOKENS * KEY_DIM  # QK^T and AV
        total += projections + products + 2 * TOKENS * WIDTH * m
    return total


def _images(seed=1, batch=2, size=32):
    return np.random.RandomState(seed).uniform(0, 255, (batch, size, size, 3)).astype("float32")


def _tflite_macs(model, path):
    from pn_tf.export import export_tflite
    from pn_tf.tflite.inspection import tflite_macs

    export_tflite(model, str(path), "float32")
    return tflite_macs(str(path))


def _pruned_vit(seed=2):
    gated = auto.insert_gates(_vit())
    auto.random_gate_logits(gated, seed=seed)
    return gated, extract_at(gated, 0.3, images=_images())


def test_vit_counts_attention_macs_like_the_tflite_graph(tmp_path):
    model = _vit()
    graph = ChannelGraph(model)
    assert graph.uncounted_layers == [] and not any("attention" in w for w in graph.warnings)
    flops = FlopsModel(graph)
    assert flops.total == _vit_macs([4, 4], [256, 256]) == 7_537_280
    gated = FlopsModel(auto.insert_gates(model))  # heads and MLP widths: all but patches and head
    assert gated.total == flops.total and gated.prunable / gated.total > 0.97
    tflite_before = _tflite_macs(model, tmp_path / "vit.tflite")
    assert tflite_before == pytest.approx(flops.total, rel=0.01)

    _, extraction = _pruned_vit()
    narrow = extraction.model
    heads = [layer.num_heads for layer in narrow.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
    mlp = [narrow.get_layer(f"mlp{b}_in").units for b in range(2)]
    assert extraction.flops == _vit_macs(heads, mlp)
    tflite_after = _tflite_macs(narrow, tmp_path / "pruned.tflite")  # converts in float32
    assert tflite_after == pytest.approx(extraction.flops, rel=0.01)
    assert tflite_after < 0.75 * tflite_before


def test_vit_heads_prune_whole_and_the_model_reloads_without_pn_tf(tmp_path):
    model = _vit()
    analysis = auto.analyse(model)
    assert [(g.size, g.producers) for g in analysis.groups] == [
        (4, ["attention0"]), (256, ["mlp0_in"]), (4, ["attention1"]), (256, ["mlp1_in"])]
    gated = auto.insert_gates(model, analysis.groups)
    assert [type(gated.get_layer(f"attention{b}")) for b in range(2)] == [HeadGatedAttention] * 2
    assert [g.name for g in gate_layers(gated)] == [g.gate for g in ChannelGraph(gated).groups]
    x = _images()
    original = np.asarray(model(x))
    np.testing.assert_array_equal(original, np.asarray(gated(x)))  # identity gates: the same model

    auto.random_gate_logits(gated, seed=2)
    extraction = extract_at(gated, 0.3, images=x)
    assert extraction.equivalent
    assert extraction.max_abs_diff <= 1e-4 * max(1.0, extraction.output_scale)
    assert abs(extraction.selection.reduction - 0.3) < 0.01
    set_gate_mode(gated, "mask")  # the masks extract_at compared with: the closed heads act
    assert np.abs(np.asarray(gated(x)) - original).max() > 1e-3
    set_gate_mode(gated, "identity")

    narrow = extraction.model
    kept = dict(zip([g.gate for g in extraction.graph.groups], extraction.selection.widths))
    attention = [layer for layer in narrow.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
    assert [type(layer) for layer in attention] == [keras.layers.MultiHeadAttention] * 2
    assert [layer.num_heads for layer in attention] == [kept[f"attention{b}_heads_gate"] for b in range(2)]
    assert min(layer.num_heads for layer in attention) < 4  # some heads closed
    assert all(layer.key_dim == KEY_DIM and layer.value_dim == KEY_DIM for layer in attention)
    assert not any(isinstance(layer, ChannelGate) for layer in narrow._flatten_layers())

    path = tmp_path / "pruned.keras"
    narrow.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(narrow(x)))
    script = (  # a fresh process that never imports pn_tf
        "import sys, numpy as np, keras\n"
        "m = keras.models.load_model(sys.argv[1])\n"
        "assert 'pn_tf' not in sys.modules\n"
        "heads = [l.num_heads for l in m.layers if isinstance(l, keras.layers.MultiHeadAttention)]\n"
        "y = np.asarray(m(np.load(sys.argv[2])))\n"
        "assert np.allclose(y, np.load(sys.argv[3]), rtol=1e-5, atol=1e-5), np.abs(y - np.load(sys.argv[3])).max()\n"
        "print('heads', heads)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], check=False, cwd=tmp_path, capture_output=True, text=True,
                         timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"heads {[layer.num_heads for layer in attention]}" in out.stdout


def test_search_sees_the_head_gates():
    gated = auto.insert_gates(_vit())
    flops = FlopsModel(gated)
    names = [g.gate for g in flops.graph.groups]
    assert names == [g.name for g in gate_layers(gated)]
    widths = [2 if "heads" in name else 256 for name in names]  # half the heads of both blocks
    assert flops.count(widths) == _vit_macs([2, 2], [256, 256])
    heads = gated.get_layer("attention0").head_gate
    set_gate_mode(gated, "soft")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(gated(_images(), training=False)))
    gradient = tape.gradient(loss, heads.logits)
    assert gradient is not None and np.abs(gradient.numpy()).min() > 0  # every head's gate is live


def test_head_gate_zeroes_exactly_one_heads_share():
    """The gate acts through MultiHeadAttention's private ``_compute_attention`` hook: a closed head
    is the same as a head whose value projection is zero."""
    keras.utils.set_random_seed(3)
    query, value = keras.random.normal((2, 5, 8)), keras.random.normal((2, 7, 6))
    plain = keras.layers.MultiHeadAttention(3, 4, value_dim=5, name="mha")
    expected_identity = plain(query, value)
    gated = HeadGatedAttention.gating(plain, "mha_heads_gate")
    gated(query, value)
    copy_weights(plain, gated)
    assert gated.head_gate.name == "mha_heads_gate" and gated.head_gate.channels == 3
    np.testing.assert_array_equal(np.asarray(gated(query, value)), np.asarray(expected_identity))
    gated.head_gate.mask.assign([1.0, 0.0, 1.0])
    gated.head_gate.mode = "mask"
    kernel, bias = plain.value_dense.get_weights()
    kernel[:, 1], bias[1] = 0.0, 0.0
    plain.value_dense.set_weights([kernel, bias])
    np.testing.assert_allclose(np.asarray(gated(query, value)), np.asarray(plain(query, value)), atol=1e-6)
    again = HeadGatedAttention.from_config(gated.get_config())
    assert again.head_gate.name == "mha_heads_gate" and again.get_config()["num_heads"] == 3
    cls, config = gated.ungated_config()
    assert cls is keras.layers.MultiHeadAttention and "head_gate" not in config


def _cross_attention():
    """Cross-attention with query, key and value of three widths, an output_shape of its own and
    no residual: every space is prunable, the attention's output too."""
    keras.utils.set_random_seed(4)
    tokens, memory = keras.Input((10, 8)), keras.Input((6, 8))
    q = keras.layers.Dense(12, activation="relu", name="q_in")(tokens)
    v = keras.layers.Dense(20, activation="relu", name="v_in")(memory)
    k = keras.layers.Dense(16, activation="relu", name="k_in")(memory)
    y = keras.layers.MultiHeadAttention(3, 5, value_dim=7, output_shape=24, name="cross")(q, v, key=k)
    y = keras.layers.GlobalAveragePooling1D()(keras.layers.ReLU()(y))
    return keras.Model([tokens, memory], keras.layers.Dense(4, name="head")(y))


def test_cross_attention_narrows_each_input_heads_and_output():
    model = _cross_attention()
    flops = FlopsModel(model)
    attention = (10 * 12 * 3 * 5 + 6 * 16 * 3 * 5 + 6 * 20 * 3 * 7  # query, key, value projections
                 + 3 * 10 * 6 * 5 + 3 * 10 * 6 * 7 + 10 * 3 * 7 * 24)  # QK^T, AV, output projection
    assert flops.total == attention + 10 * 8 * 12 + 6 * 8 * 20 + 6 * 8 * 16 + 24 * 4
    groups = auto.analyse(model).groups
    assert sorted(g.size for g in groups) == [3, 12, 16, 20, 24]
    gated = auto.insert_gates(model, groups)
    auto.random_gate_logits(gated, seed=5)
    rng = np.random.RandomState(0)
    x = [rng.randn(2, 10, 8).astype("float32"), rng.randn(2, 6, 8).astype("float32")]
    keep = [np.arange(g.size) % 3 != 1 for g in ChannelGraph(gated).groups]  # a third of each
    extraction = extract_at(gated, keep=keep, images=x)
    assert extraction.equivalent, (extraction.max_abs_diff, extraction.output_scale)
    assert extraction.output_scale > 1e-3
    cross = extraction.model.get_layer("cross")
    assert cross.num_heads == 2 and cross.get_config()["output_shape"] == (16,)
    assert [cross.query_dense.kernel.shape[0], cross.key_dense.kernel.shape[0],
            cross.value_dense.kernel.shape[0]] == [8, 11, 13]
    assert FlopsModel(extraction.model).total == extraction.selected_flops


def test_einsum_dense_on_the_last_axis_prunes_like_a_dense():
    keras.utils.set_random_seed(6)
    inputs = keras.Input((10, 8))
    # A static output_shape: with (None, 32) Keras gives the output (None, None, 32), whose MACs
    # downstream cannot be counted.
    x = keras.layers.EinsumDense("abc,cd->abd", (10, 32), bias_axes="d", activation="relu", name="e1")(inputs)
    x = keras.layers.EinsumDense("...b,bc->...c", 16, name="e2")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling1D()(x)))
    flops = FlopsModel(model)
    assert flops.total == 10 * 8 * 32 + 10 * 32 * 16 + 16 * 3
    groups = auto.analyse(model).groups
    assert [(g.producers, g.consumers) for g in groups] == [(["e1"], ["e2"]), (["e2"], ["head"])]
    gated = auto.insert_gates(model, groups)
    auto.random_gate_logits(gated, seed=7)
    x = np.random.RandomState(1).randn(2, 10, 8).astype("float32")
    extraction = extract_at(gated, 0.3, images=x)
    assert extraction.equivalent and extraction.output_scale > 1e-3
    e1, e2 = extraction.model.get_layer("e1"), extraction.model.get_layer("e2")
    assert e1.get_config()["output_shape"][-1] == e2.kernel.shape[0] < 32
    assert e2.get_config()["output_shape"][-1] < 16
    assert FlopsModel(extraction.model).total == extraction.selected_flops


def test_other_einsum_dense_is_counted_not_pruned():
    inputs = keras.Input((10, 8))
    x = keras.layers.Dense(12, activation="relu", name="d1")(inputs)
    x = keras.layers.EinsumDense("abc,bd->adc", (6, 12), name="mix_tokens")(x)  # mixes tokens
    x = keras.layers.Dense(5, activation="relu", name="d2")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    graph = ChannelGraph(model)
    assert graph.uncounted_layers == [] and graph.opaque_layers == []
    rows = {(layer, kind): macs for layer, kind, macs in FlopsModel(graph).table()}
    assert rows[("mix_tokens", "einsum")] == 10 * 6 * 12
    assert graph.fixed_reason(graph.layer_atoms("d1")[1][0])  # what it reads stays
    assert [g.producers for g in auto.analyse(model).groups] == [["d2"]]


def test_gated_vit_searches_and_its_checkpoint_reloads(tmp_path):
    from pn_tf.search import PNSearch

    gated = auto.insert_gates(_vit())
    auto.random_gate_logits(gated, seed=3)
    set_gate_mode(gated, "hard")
    path = tmp_path / "gated.keras"
    gated.save(path)  # the pipeline's search checkpoints hold HeadGatedAttention layers
    again = keras.models.load_model(path)
    assert [g.name for g in gate_layers(again)] == [g.name for g in gate_layers(gated)]
    x = _images(batch=4)
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(gated(x)))
    set_gate_mode(gated, "identity")

    search = PNSearch(gated, predictor="none", target_reduction=0.3)
    search.compile()
    before = [g.numpy().copy() for g in search.gate_logits]
    y = np.arange(8, dtype="int32") % 10
    search.fit(tf.data.Dataset.from_tensor_slices((_images(batch=8), y)).batch(4), epochs=1, verbose=0)
    moved = [np.abs(b - g.numpy()).max() for b, g in zip(before, search.gate_logits)]
    assert all(m > 0 for m in moved)  # the heads' gates learn like the MLP's


def test_heads_have_magnitude_scores_for_l1_and_uniform_selections():
    """A head's score is the L1 norm of its query, key, value and output kernels: the L1 ranking
    drops the head whose kernels were shrunk, and uniform widths narrow every attention."""
    from pn_tf.extract import channel_scores

    gated = auto.insert_gates(_vit())
    attention = [layer for layer in gated.layers if isinstance(layer, HeadGatedAttention)]
    weak = attention[0]
    kernel = weak._output_dense.kernel
    kernel.assign(kernel.numpy() * np.array([1.0, 0.01, 1.0, 1.0])[:, None, None])  # head 1: tiny
    graph = ChannelGraph(gated)
    heads = [k for k, g in enumerate(graph.groups) if g.size == 4 and weak.name in g.producers]
    assert len(heads) == 1
    scores = channel_scores("l1", gated, graph)[heads[0]]
    assert np.argmin(scores) == 1 and np.ptp(scores) > 0
    extraction = extract_at(gated, 0.3, scores=channel_scores("uniform", gated, graph), graph=graph,
                            images=_images())
    narrow = [layer for layer in extraction.model.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
    assert narrow and all(layer.num_heads < 4 for layer in narrow)


def test_train_vit_tool_refuses_bad_arguments():
    from tests.conftest import REPO_ROOT

    for args in (["--output=vit.h5"], ["--output=v.keras", "--width=30", "--heads=4"]):
        out = subprocess.run([sys.executable, "tools/train_vit.py", *args], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr[-500:]


def test_latency_tables_count_a_head_as_its_key_dim_channels():
    """An attention unit's latency follows its heads: counted one channel per head beside the 64
    output channels, every head count fell in one channel tile and the table saw no change (a
    ViT's int8 estimate put a 0.49 cut where 0.05 was measured)."""
    from pn_tf.latency.table import unit_dependence, width_fraction

    gated = auto.insert_gates(_vit())
    graph = ChannelGraph(gated)
    heads = [g for g in graph.groups if g.size == 4]
    assert len(heads) == 2
    attention = next(layer for layer in gated.layers if isinstance(layer, keras.layers.MultiHeadAttention))
    node = attention._inbound_nodes[0]
    dependence = unit_dependence(graph, [node])
    assert dependence["out_groups"] == {str(heads[0].index): KEY_DIM} and dependence["product"]
    assert dependence["in_fixed"] == 3 * WIDTH  # query, key and value read the residual stream
    full = [g.size for g in graph.groups]
    tiles = {"in": 8, "out": 16}
    fractions = []
    for kept in (1, 2, 3, 4):
        widths = list(full)
        widths[heads[0].index] = kept
        fractions.append(width_fraction(dependence, widths, full, tiles))
    assert fractions == sorted(fractions) and len(set(fractions)) == 4 and fractions[-1] == 1.0
