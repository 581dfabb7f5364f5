"""ShuffleNetV2+ (Megvii) with a channel gate on every prunable group.

Sources:

* Ma, Zhang, Zheng, Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN
  Architecture Design", ECCV 2018 (the split / concat / shuffle unit).
* Megvii Research, ShuffleNet-Series, "ShuffleNetV2+" (github.com/megvii-model/
  ShuffleNet-Series, folder ShuffleNetV2+): ShuffleNetV2 strengthened with
  hard-swish, hard-sigmoid and squeeze-excitation. Published at 224x224:
  Large 360M FLOPs / 6.7M params, Medium 222M / 5.6M, Small 156M / 5.1M.

This is an independent Keras 3 implementation of that description:

* Stem: 3x3 conv stride 2 to 16 channels, BN, h-swish.
* Four stages of 4/4/8/4 blocks, widths 68/168/336/672 (Large), 48/128/256/512
  (Medium) or 36/104/208/416 (Small). The first block of a stage has stride 2.
  Stage 1 uses ReLU, stages 2-4 h-swish; stages 3-4 end every main branch with SE.
* One fixed block choice per block (:data:`ARCHITECTURE`, 0 = Shuffle3x3,
  1 = Shuffle5x5, 2 = Shuffle7x7, 3 = Xception).
* Stride-1 block: the input's even channels pass through, the odd channels enter
  the main branch (Megvii's ``channel_shuffle``); output ``[passthrough, main]``.
  Stride-2 block: the whole input feeds both the projection branch
  (dw kxk stride 2 - BN - 1x1 - BN - act) and the main branch; output
  ``[projection, main]``. No shuffle after the concat (the next block's even/odd
  split is the shuffle).
* Shuffle kxk main branch: 1x1 to ``mid`` - BN - act - dw kxk (stride) - BN -
  1x1 to ``out - in`` - BN - act [- SE]. ``mid = block output width / 2``.
* Xception main branch: dw 3x3 (stride) - BN - 1x1 to mid - BN - act - dw 3x3 - BN -
  1x1 to mid - BN - act - dw 3x3 - BN - 1x1 to ``out - in`` - BN - act [- SE].
* SE (reduction 4): global pool - 1x1 conv C -> C/4 (no bias) - BN - ReLU -
  1x1 conv C/4 -> C (no bias) - hard sigmoid ``relu6(x + 3) / 6`` - multiply.
* Head: 1x1 conv to 1280 - BN - h-swish - global average pool - SE(1280) -
  dense 1280 -> 1280 (no bias) - h-swish - dropout - dense classifier (no bias).
* No convolution or dense layer has a bias (as in Megvii's code).

Prunable groups (METHOD.md item 2): the mid channels of each block's main branch.
A Shuffle kxk block has one group (its first 1x1 conv's outputs, which are also the
depthwise conv's channels). An Xception block has two independent groups: ``mid1``
(first 1x1 and second depthwise conv) and ``mid2`` (second 1x1 and third depthwise
conv); the dense 1x1 conv between them mixes all channels, so the two widths need
not be tied. Each group's :class:`~pn_tf.layers.ChannelGate` is applied twice (the
same layer instance): after the 1x1 conv's BN + activation and after the depthwise
conv's BN. A removed channel is zero after the first application, but the
depthwise BN's shift makes it a nonzero constant again, so the second application
restores the zero before the next 1x1 conv. With hard 0/1 gates the gated network
therefore equals the network with those channels physically removed. Block inputs
and outputs (the split / concat stream) are not pruned.

Gate order: blocks in graph order; inside an Xception block ``mid1`` then ``mid2``.
"""

import keras

from pn_tf.layers import ChannelGate, ChannelShuffle, ChannelSplit, batchnorm
from pn_tf.models.common import IMAGENET_MEAN, IMAGENET_STD, image_input, resolve_widths

STAGE_REPEATS = (4, 4, 8, 4)
STEM_WIDTH = 16
LAST_WIDTH = 1280
STAGE_WIDTHS = {
    "Large": (68, 168, 336, 672),
    "Medium": (48, 128, 256, 512),
    "Small": (36, 104, 208, 416),
}
# Megvii's fixed block choices (the same list for all three sizes).
ARCHITECTURE = (0, 0, 3, 1, 1, 1, 0, 0, 2, 0, 2, 1, 1, 0, 2, 0, 2, 1, 3, 2)
BLOCK_KERNELS = {0: 3, 1: 5, 2: 7}  # choice 3 is the Xception block
XCEPTION = 3
SE_REDUCTION = 4

_BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1
_BN_EPSILON = 1e-5


def _canonical_size(size):
    if isinstance(size, str):
        for key in STAGE_WIDTHS:
            if size.lower() == key.lower():
                return key
    raise ValueError(f"ShuffleNetV2+ size must be one of {tuple(STAGE_WIDTHS)}, got {size!r}")


def _block_plan(size, hard_swish="decomposed"):
    """One dict per block: stage, index, stride, in/out width, choice, activation, SE."""
    plan = []
    in_width = STEM_WIDTH
    choices = iter(ARCHITECTURE)
    for stage, (repeats, width) in enumerate(zip(STAGE_REPEATS, STAGE_WIDTHS[size])):
        for block in range(repeats):
            plan.append(dict(
                name=f"stage{stage + 1}_block{block + 1}",
                strides=2 if block == 0 else 1,
                in_width=in_width,
                out_width=width,
                choice=next(choices),
                activation="relu" if stage == 0 else hard_swish,
                use_se=stage >= 2,
            ))
            in_width = width
    return plan


def _default_group_widths(size):
    widths = []
    for block in _block_plan(size):
        mid = block["out_width"] // 2
        widths.extend([mid, mid] if block["choice"] == XCEPTION else [mid])
    return widths


# --------------------------------------------------------------------------- layers


def _bn(x, name):
    return batchnorm.BatchNormalization(
        momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name
    )(x)


HARD_SWISH_FORMS = ("decomposed", "fused")


def _act(x, activation, name):
    """ReLU, or h-swish ``x * relu6(x + 3) / 6`` in one of :data:`HARD_SWISH_FORMS`.

    ``"fused"`` is Keras's ``hard_silu``, which the TFLite converter turns into one
    HARD_SWISH op; XNNPACK runs that op in float32 but not in int8, so an int8 model falls
    back to TFLite's builtin kernel at every h-swish and splits into dozens of delegate
    partitions (measured: 38 for ShuffleNetV2+ Small). ``"decomposed"`` writes the same
    function with standard layers as ``relu6(x + 3) * (x / 6)``, which XNNPACK takes in
    int8 (one partition for the whole graph). Same outputs, same weights.

    The operand order matters twice. The converter fuses ``x * relu6(x + 3) * (1/6)`` and
    its regroupings with ``x`` first back into HARD_SWISH, but not these two orders. And
    TFLite's int8 calibration logs a MUL's first operand again *after* the op has reused
    its buffer for the product (tensorflow/tensorflow#127842), giving that operand the
    union of its range and the product's. With the gate first that is harmless; the
    earlier ``(x / 6) * relu6(x + 3)`` gave ``x / 6`` the product's range, ~6x too coarse,
    and cost a trained ShuffleNetV2+ Small 8.5 points of int8 accuracy (docs/results.md).
    :func:`pn_tf.export.export_tflite` also repairs such ranges itself. The layers and
    their order are those of the earlier form, so its weight files still load.
    """
    if activation == "relu":
        return keras.layers.Activation("relu", name=f"{name}_relu")(x)
    if activation == "fused":
        return keras.layers.Activation("hard_silu", name=f"{name}_hswish")(x)
    shifted = keras.layers.Rescaling(1.0, offset=3.0, name=f"{name}_hswish_shift")(x)
    gate = keras.layers.ReLU(max_value=6.0, name=f"{name}_hswish_relu6")(shifted)
    scaled = keras.layers.Rescaling(1.0 / 6.0, name=f"{name}_hswish_scale")(x)
    return keras.layers.Multiply(name=f"{name}_hswish")([gate, scaled])


def _pad_for_stride(x, kernel_size, strides, name):
    """PyTorch-style symmetric padding for a strided conv (TF's "same" pads unevenly)."""
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        return x, "valid"
    return x, "same"


def _conv(x, filters, kernel_size, strides, name):
    x, padding = _pad_for_stride(x, kernel_size, strides, name)
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=name
    )(x)


def _dwconv(x, kernel_size, strides, name):
    x, padding = _pad_for_stride(x, kernel_size, strides, name)
    return keras.layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding=padding, use_bias=False, name=name
    )(x)


def _squeeze_excite(x, name, pooled=False):
    """Megvii's SELayer: pool, 1x1 C -> C/4, BN, ReLU, 1x1 C/4 -> C, hard sigmoid, scale.

    ``pooled=True`` when ``x`` is already a (N, 1, 1, C) pooled map (the head's SE).
    """
    channels = x.shape[-1]
    s = x if pooled else keras.layers.GlobalAveragePooling2D(
        keepdims=True, name=f"{name}_pool")(x)
    s = keras.layers.Conv2D(channels // SE_REDUCTION, 1, use_bias=False, name=f"{name}_reduce")(s)
    s = _bn(s, f"{name}_reduce_bn")
    s = keras.layers.ReLU(name=f"{name}_relu")(s)
    s = keras.layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_expand")(s)
    s = keras.layers.Activation("hard_sigmoid", name=f"{name}_hsigmoid")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def _gated_pw_dw(x, mid, kernel_size, strides, activation, name, gate_name):
    """1x1 conv to ``mid`` - BN - act - gate - dw kxk - BN - same gate."""
    gate = ChannelGate(name=gate_name)
    x = _conv(x, mid, 1, 1, f"{name}_pw")
    x = _bn(x, f"{name}_pw_bn")
    x = _act(x, activation, f"{name}_pw")
    x = gate(x)
    x = _dwconv(x, kernel_size, strides, f"{name}_dw")
    x = _bn(x, f"{name}_dw_bn")
    return gate(x)


def _main_branch(x, block, out_channels, mids, name):
    activation, strides = block["activation"], block["strides"]
    if block["choice"] == XCEPTION:
        # Megvii's code also gives the 2nd and 3rd depthwise convs the block's stride;
        # the fixed architecture only uses Xception blocks at stride 1, where it makes
        # no difference. Here only the first depthwise conv is strided, so a stride-2
        # Xception block would keep its branches' spatial sizes consistent.
        x = _dwconv(x, 3, strides, f"{name}_dw0")
        x = _bn(x, f"{name}_dw0_bn")
        x = _gated_pw_dw(x, mids[0], 3, 1, activation, f"{name}_mid1", f"{name}_mid1_gate")
        x = _gated_pw_dw(x, mids[1], 3, 1, activation, f"{name}_mid2", f"{name}_mid2_gate")
    else:
        kernel = BLOCK_KERNELS[block["choice"]]
        x = _gated_pw_dw(x, mids[0], kernel, strides, activation, f"{name}_mid", f"{name}_gate")
    x = _conv(x, out_channels, 1, 1, f"{name}_pwl")
    x = _bn(x, f"{name}_pwl_bn")
    x = _act(x, activation, f"{name}_pwl")
    if block["use_se"]:
        x = _squeeze_excite(x, f"{name}_se")
    return x


def _block(x, block, mids):
    name, strides, activation = block["name"], block["strides"], block["activation"]
    in_width = x.shape[-1]
    if strides == 1:
        # Megvii's channel_shuffle: even channels -> passthrough, odd -> main branch.
        # ChannelShuffle(groups=C/2) moves channel 2j to j and 2j+1 to C/2 + j, so a
        # contiguous split in two then yields (even, odd).
        x = ChannelShuffle(groups=in_width // 2, name=f"{name}_shuffle")(x)
        passthrough, main = ChannelSplit(2, name=f"{name}_split")(x)
        main_out = block["out_width"] - in_width // 2
    else:
        passthrough = main = x
        kernel = 3 if block["choice"] == XCEPTION else BLOCK_KERNELS[block["choice"]]
        passthrough = _dwconv(passthrough, kernel, strides, f"{name}_proj_dw")
        passthrough = _bn(passthrough, f"{name}_proj_dw_bn")
        passthrough = _conv(passthrough, in_width, 1, 1, f"{name}_proj_pw")
        passthrough = _bn(passthrough, f"{name}_proj_pw_bn")
        passthrough = _act(passthrough, activation, f"{name}_proj_pw")
        main_out = block["out_width"] - in_width
    main = _main_branch(main, block, main_out, mids, name)
    return keras.layers.Concatenate(name=f"{name}_concat")([passthrough, main])


# --------------------------------------------------------------------------- builder


def shufflenetv2plus(input_shape=(224, 224, 3), num_classes=1000, size="Large", widths=None,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, dropout=0.2, name=None,
                     hard_swish="decomposed"):
    """Megvii's ShuffleNetV2+ (Large / Medium / Small) with channel gates.

    Args:
        input_shape: tuple of ints. (height, width, channels); images arrive as
            float pixels in 0..255. Any spatial size works (the stride is 32 and
            pooling is global); Megvii uses 224.
        num_classes: int. Size of the classifier.
        size: str. ``"Large"`` (360M MACs), ``"Medium"`` (222M) or ``"Small"``
            (156M); case-insensitive.
        widths: list of ints or None. One width per gate, in gate order (see the
            module docstring), each in [1, default]; builds a physically narrower
            network. ``None`` keeps the default widths (block output width / 2).
        mean, std: per-channel pixel statistics used by the input normalisation
            (default: ImageNet's, in pixel units).
        dropout: float in [0, 1). Dropout rate before the classifier (Megvii: 0.2).
        name: str. Model name (default ``shufflenetv2plus_<size>``).
        hard_swish: ``"decomposed"`` (default: int8 TFLite stays inside XNNPACK; float32
            runs three ops instead of one, see docs/latency.md) or ``"fused"`` (one Keras
            ``hard_silu`` layer). See :func:`_act`; both compute the same function.

    Returns:
        A functional ``keras.Model`` mapping images to logits.

    Example:

    >>> model = shufflenetv2plus(size="Small", num_classes=10, input_shape=(64, 64, 3))
    >>> model.output.shape
    (None, 10)
    """
    size = _canonical_size(size)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in input_shape):
        raise ValueError(f"input_shape needs positive integer sizes, got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    if hard_swish not in HARD_SWISH_FORMS:
        raise ValueError(f"hard_swish must be one of {HARD_SWISH_FORMS}, got {hard_swish!r}")
    name = name or f"shufflenetv2plus_{size.lower()}"
    group_widths = resolve_widths(_default_group_widths(size), widths, name)
    inputs, x = image_input(input_shape, mean, std, name)
    x = _conv(x, STEM_WIDTH, 3, 2, "stem_conv")
    x = _bn(x, "stem_bn")
    x = _act(x, hard_swish, "stem")

    index = 0
    for block in _block_plan(size, hard_swish):
        count = 2 if block["choice"] == XCEPTION else 1
        x = _block(x, block, group_widths[index:index + count])
        index += count

    x = _conv(x, LAST_WIDTH, 1, 1, "conv_last")
    x = _bn(x, "conv_last_bn")
    x = _act(x, hard_swish, "conv_last")
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(x)
    x = _squeeze_excite(x, "last_se", pooled=True)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(LAST_WIDTH, use_bias=False, name="fc")(x)
    x = _act(x, hard_swish, "fc")
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, use_bias=False, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


def shufflenetv2plus_large(**kwargs):
    """ShuffleNetV2+ Large (360M MACs, 6.7M params at 224x224)."""
    return shufflenetv2plus(size="Large", **kwargs)


def shufflenetv2plus_medium(**kwargs):
    """ShuffleNetV2+ Medium (222M MACs, 5.6M params at 224x224)."""
    return shufflenetv2plus(size="Medium", **kwargs)


def shufflenetv2plus_small(**kwargs):
    """ShuffleNetV2+ Small (156M MACs, 5.1M params at 224x224)."""
    return shufflenetv2plus(size="Small", **kwargs)
