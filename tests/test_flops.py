import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pn_tf.graph import FlopsModel, count_params
from pn_tf.models import ARCHITECTURES, build_model
from tests.conftest import REPO_ROOT

# (arch, published MACs, published params or None); METHOD.md item 3 and the issue.
PUBLISHED = [
    ("resnet56", 125.49e6, None),
    ("mobilenetv2_cifar", 304.08e6, None),
    ("resnet34", 3.66e9, None),
    ("resnet50", 4.09e9, None),
    ("resnet101", 7.80e9, None),
    ("mobilenetv2", 300.8e6, None),
    ("shufflenetv2plus_large", 360e6, 6.7e6),
    ("shufflenetv2plus_medium", 222e6, 5.6e6),
    ("shufflenetv2plus_small", 156e6, 5.1e6),
]


def _available(arch):
    if arch not in ARCHITECTURES:
        pytest.skip(f"{arch} not in the zoo")


@pytest.mark.parametrize("arch,macs,params", PUBLISHED)
def test_published_totals(arch, macs, params):
    _available(arch)
    model = build_model(arch)
    flops = FlopsModel(model)
    assert abs(flops.total - macs) / macs < 0.01, flops.total
    assert 0 < flops.prunable <= flops.total
    if params:
        assert abs(count_params(model) - params) / params < 0.02, count_params(model)


SMALL = [("resnet56", 32), ("mobilenetv2_cifar", 32), ("resnet34", 64), ("resnet50", 64),
         ("mobilenetv2", 64), ("shufflenetv2plus_large", 64)]


@pytest.mark.parametrize("arch,size", SMALL)
def test_t_of_a_equals_network_built_at_kept_widths(arch, size):
    _available(arch)
    rng = np.random.RandomState(3)
    flops = FlopsModel(build_model(arch, input_size=size))
    gates = []
    for group in flops.graph.groups:
        keep = (rng.rand(group.size) < rng.uniform(0.2, 0.9)).astype("float32")
        keep[rng.randint(group.size)] = 1.0
        gates.append(keep)
    widths = [int(g.sum()) for g in gates]
    narrow = FlopsModel(build_model(arch, input_size=size, widths=widths))
    assert narrow.total == pytest.approx(float(flops(gates)), rel=1e-6)
    assert narrow.total == pytest.approx(flops.count(widths), rel=1e-12)
    assert flops.count() == flops.total == pytest.approx(float(flops([np.ones(int(w)) for w in flops.widths])), rel=1e-6)


def test_t_of_a_is_differentiable_and_bilinear_in_bottlenecks():
    flops = FlopsModel(build_model("resnet50", input_size=64))
    gates = [tf.Variable(tf.fill([int(w)], 0.5)) for w in flops.widths]
    with tf.GradientTape() as tape:
        total = flops(gates)
    grads = tape.gradient(total, gates)
    assert all(g is not None and float(tf.reduce_min(g)) > 0 for g in grads)
    # conv2 of the first bottleneck reads gate 0 and writes gate 1: its cost is
    # 3*3*c0*c1*H*W, so the mixed second difference is the same for every c0, c1.
    widths = flops.widths.copy()
    def t(c0, c1):
        w = widths.copy(); w[0], w[1] = c0, c1
        return flops.count(w)
    mixed = t(10, 10) - t(9, 10) - t(10, 9) + t(9, 9)
    assert mixed == pytest.approx(3 * 3 * 16 * 16)


def test_p_for_reduction_matches_supplement():
    flops = FlopsModel(build_model("resnet56"))
    assert flops.p_for_reduction(0.5) == pytest.approx(0.5 * flops.total / flops.prunable)
    assert flops.reduction_for_p(flops.p_for_reduction(0.3)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="reduction"):
        flops.p_for_reduction(1.5)
    mbv2 = FlopsModel(build_model("mobilenetv2"))
    with pytest.raises(ValueError, match="prunable"):
        mbv2.p_for_reduction(0.99)


def test_flops_tool_json():
    out = subprocess.run(
        [sys.executable, "tools/flops.py", "--arch=resnet56", "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(summary["flops"] - 125.49e6) / 125.49e6 < 0.01
    assert {"flops", "params", "prunable_flops", "p"} <= set(summary)
    assert summary["p"] == pytest.approx(0.50, abs=0.01)


def test_flops_tool_rejects_unknown_arch():
    out = subprocess.run([sys.executable, "tools/flops.py", "--arch=vgg99", "--json"],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert "unknown architecture 'vgg99'" in out.stderr


def test_layers_whose_macs_are_not_counted_are_named(caplog):
    """A recurrent layer (no MAC rule) is named in a warning, never counted as zero silently;
    attention is counted (tests/test_attention.py)."""
    import keras

    from pn_tf.graph import ChannelGraph

    tokens = keras.Input((16, 8))
    h = keras.layers.Dense(8, name="embed")(tokens)
    h = keras.layers.MultiHeadAttention(2, 4, name="attention")(h, h)
    h = keras.layers.LSTM(8, return_sequences=True, name="recurrent")(h)
    h = keras.layers.Embedding(10, 4, name="unused_lookup")(keras.ops.cast(h[..., :1], "int32"))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(h))
    with caplog.at_level("WARNING", logger="pn_tf.graph.channels"):
        graph = ChannelGraph(keras.Model(tokens, outputs))
    assert graph.uncounted_layers == ["recurrent"]  # an embedding looks rows up: no MACs
    assert "the MACs of 1 layer(s) are not counted in pn-tf's FLOPs" in caplog.text
    assert not ChannelGraph(build_model("resnet56")).uncounted_layers
