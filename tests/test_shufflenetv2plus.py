"""ShuffleNetV2+ builder: published sizes, gates, widths, save/load, hard-gate equivalence."""

import numpy as np
import pytest

import keras

from pn_tf.layers import ChannelGate, gate_layers, set_gate_mode
from pn_tf.models.shufflenetv2plus import shufflenetv2plus

# Megvii ShuffleNet-Series README (224x224, 1000 classes): MACs, params.
PUBLISHED = {"Large": (360e6, 6.7e6), "Medium": (222e6, 5.6e6), "Small": (156e6, 5.1e6)}
STAGE_MIDS = {
    "Large": (34, 84, 168, 336), "Medium": (24, 64, 128, 256), "Small": (18, 52, 104, 208)
}
SMALL_INPUT = (64, 64, 3)


def count_macs(model):
    """Multiply-accumulates of convs (incl. depthwise) and dense layers; nothing else."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            _, h, w, c = layer.output.shape
            total += kh * kw * c * h * w
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            _, h, w, c = layer.output.shape
            total += kh * kw * (layer.input.shape[-1] // layer.groups) * c * h * w
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def count_params(model):
    """Trainable parameters as PyTorch counts them: no BN moving statistics, no gates."""
    return sum(
        int(np.prod(w.shape))
        for layer in model.layers
        if not isinstance(layer, ChannelGate)
        for w in layer.trainable_weights
    )


@pytest.fixture(scope="module")
def full_models():
    return {size: shufflenetv2plus(size=size) for size in PUBLISHED}


@pytest.mark.parametrize("size", list(PUBLISHED))
def test_published_macs_and_params(full_models, size):
    model = full_models[size]
    macs, params = PUBLISHED[size]
    assert model.output.shape == (None, 1000)
    assert count_macs(model) == pytest.approx(macs, rel=0.01)
    assert count_params(model) == pytest.approx(params, rel=0.02)


@pytest.mark.parametrize("size", list(PUBLISHED))
def test_gates_order_and_widths(full_models, size):
    gates = gate_layers(full_models[size])
    s1, s2, s3, s4 = STAGE_MIDS[size]
    # 20 blocks, two of them Xception (stage1_block3, stage4_block3) with two groups each.
    expected = [s1] * 5 + [s2] * 4 + [s3] * 8 + [s4] * 5
    assert [g.channels for g in gates] == expected
    names = [g.name for g in gates]
    assert names[:4] == ["stage1_block1_gate", "stage1_block2_gate",
                         "stage1_block3_mid1_gate", "stage1_block3_mid2_gate"]
    assert names[-1] == "stage4_block4_gate"
    assert len(set(names)) == len(names) == 22


def test_small_input_and_classes():
    model = shufflenetv2plus(input_shape=SMALL_INPUT, num_classes=10, size="Small")
    x = np.random.default_rng(0).uniform(0, 255, (2,) + SMALL_INPUT).astype("float32")
    y = _run(model, x)
    assert y.shape == (2, 10)
    assert np.all(np.isfinite(y))


def test_bad_arguments():
    with pytest.raises(ValueError, match="Tiny"):
        shufflenetv2plus(size="Tiny")
    with pytest.raises(ValueError, match="widths"):
        shufflenetv2plus(size="Small", input_shape=SMALL_INPUT, widths=[4] * 3)
    with pytest.raises(ValueError, match="999"):
        shufflenetv2plus(size="Small", input_shape=SMALL_INPUT, widths=[999] * 22)
    with pytest.raises(ValueError, match="input_shape"):
        shufflenetv2plus(size="Small", input_shape=(64, 64))


def test_widths_override_builds_narrower_model(full_models):
    widths = [max(1, w // 2) for w in _widths("Large")]
    narrow = shufflenetv2plus(size="Large", widths=widths)
    assert [g.channels for g in gate_layers(narrow)] == widths
    assert narrow.get_layer("stage1_block1_mid_pw").kernel.shape[-1] == widths[0]
    assert narrow.get_layer("stage4_block3_mid2_dw").kernel.shape[2] == widths[-2]
    assert count_macs(narrow) < 0.8 * count_macs(full_models["Large"])


def test_megvii_even_odd_split():
    """A stride-1 block sends the even channels past and the odd ones into the main branch."""
    model = shufflenetv2plus(input_shape=SMALL_INPUT, num_classes=10, size="Small")
    probe = keras.Model(
        model.input,
        [model.get_layer("stage1_block1_concat").output,
         *model.get_layer("stage1_block2_split").output],
    )
    x = np.random.default_rng(1).uniform(0, 255, (1,) + SMALL_INPUT).astype("float32")
    stream, passthrough, main = _run(probe, x)
    np.testing.assert_array_equal(passthrough, stream[..., 0::2])
    np.testing.assert_array_equal(main, stream[..., 1::2])


def test_save_load_round_trip(tmp_path):
    model = shufflenetv2plus(input_shape=SMALL_INPUT, num_classes=10, size="Small", dropout=0.1)
    _randomize_bn(model, np.random.default_rng(2))
    set_gate_mode(model, "mask")
    gate = gate_layers(model)[3]
    gate.mask.assign(np.arange(gate.channels) % 2)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [g.mode for g in gate_layers(loaded)] == ["mask"] * 22
    x = np.random.default_rng(3).uniform(0, 255, (2,) + SMALL_INPUT).astype("float32")
    np.testing.assert_allclose(_run(loaded, x), _run(model, x),
                               rtol=0, atol=1e-6)


def test_hard_gates_equal_physical_removal():
    rng = np.random.default_rng(4)
    full = shufflenetv2plus(input_shape=SMALL_INPUT, num_classes=10, size="Small")
    _randomize_bn(full, rng)
    set_gate_mode(full, "mask")
    keeps = {}
    for gate in gate_layers(full):
        mask = rng.random(gate.channels) < 0.5
        mask[rng.integers(gate.channels)] = True
        gate.mask.assign(mask.astype("float32"))
        keeps[gate.name] = np.flatnonzero(mask)
    widths = [len(keeps[g.name]) for g in gate_layers(full)]
    narrow = shufflenetv2plus(input_shape=SMALL_INPUT, num_classes=10, size="Small", widths=widths)

    # Each group's kept channels: outputs of its 1x1 conv, its BNs and its depthwise conv;
    # inputs of the 1x1 conv that consumes it.
    out_keep, in_keep = {}, {}
    for gate_name, keep in keeps.items():
        prefix = gate_name[: -len("_gate")]
        if prefix.endswith(("_mid1", "_mid2")):
            block, group = prefix.rsplit("_", 1)
            consumer = f"{block}_mid2_pw" if group == "mid1" else f"{block}_pwl"
        else:
            block, prefix = prefix, prefix + "_mid"
            consumer = f"{block}_pwl"
        for suffix in ("_pw", "_pw_bn", "_dw", "_dw_bn"):
            out_keep[prefix + suffix] = keep
        in_keep[consumer] = keep

    for layer in narrow.layers:
        if not layer.weights or isinstance(layer, ChannelGate):
            continue
        source = full.get_layer(layer.name).get_weights()
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            if layer.name in out_keep:
                source = [w[:, :, out_keep[layer.name]] for w in source]
        elif isinstance(layer, keras.layers.Conv2D):
            (kernel,) = source
            if layer.name in out_keep:
                kernel = kernel[..., out_keep[layer.name]]
            if layer.name in in_keep:
                kernel = kernel[:, :, in_keep[layer.name], :]
            source = [kernel]
        elif isinstance(layer, keras.layers.BatchNormalization) and layer.name in out_keep:
            source = [w[out_keep[layer.name]] for w in source]
        layer.set_weights(source)

    x = rng.uniform(0, 255, (2,) + SMALL_INPUT).astype("float32")
    expected = _run(narrow, x)
    gated = _run(full, x)
    np.testing.assert_allclose(gated, expected, rtol=1e-4, atol=1e-4)
    set_gate_mode(full, "identity")
    assert not np.allclose(_run(full, x), expected, atol=1e-3)


def _widths(size):
    return [g.channels for g in gate_layers(shufflenetv2plus(size=size, input_shape=SMALL_INPUT))]


def _randomize_bn(model, rng):
    """Non-trivial BN statistics so that a removed channel's BN shift is nonzero."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, c).astype("float32"),
                rng.normal(0, 0.5, c).astype("float32"),
                rng.normal(0, 0.5, c).astype("float32"),
                rng.uniform(0.5, 2.0, c).astype("float32"),
            ])


def _run(model, x):
    """Inference-mode forward pass (eager; faster than compiling ``predict`` here)."""
    outputs = model(x, training=False)
    if isinstance(outputs, (list, tuple)):
        return [keras.ops.convert_to_numpy(o) for o in outputs]
    return keras.ops.convert_to_numpy(outputs)


def test_decomposed_hswish_quantizes_like_the_fused_op(tmp_path):
    """int8 error of the XNNPACK-friendly h-swish stays near TFLite's own HARD_SWISH.

    Guards the operand order in ``_act`` on its own, so without pn-tf's calibration repair:
    TFLite calibration gives a MUL operand that the output overwrites in place the product's
    range (tensorflow/tensorflow#127842); with the old ``(x / 6) * relu6(x + 3)`` that widened
    ``x / 6`` 6x and the error here was 1.66x the fused op's (a trained ShuffleNetV2+ Small
    lost 8.5 points of int8 accuracy).
    """
    from pn_tf import export
    from pn_tf.models.shufflenetv2plus import _act
    from pn_tf.tflite.inspection import delegation
    from pn_tf.tflite.runtime import tflite_predict
    from tests.helpers import conv_act_conv, random_images

    calibration = random_images((16, 16, 3), seed=3, batch=16)
    images = random_images((16, 16, 3), seed=4, batch=16)
    errors = {}
    for form in ("decomposed", "fused"):
        model = conv_act_conv(lambda x, form=form: _act(x, form, "t"))
        path = export.export_tflite(model, tmp_path / f"{form}.tflite", "int8", [calibration],
                                    repair_calibration=False)
        reference = export.keras_outputs(model, images)
        errors[form] = float(np.abs(tflite_predict(path, images) - reference).mean())
        if form == "decomposed":
            assert delegation(path) == {"partitions": 1, "not_delegated": {}}
    assert errors["decomposed"] <= 1.25 * errors["fused"], errors
