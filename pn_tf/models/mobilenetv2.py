"""MobileNetV2 (Sandler et al., CVPR 2018): the ImageNet model and NPPM's CIFAR variant.

Prunable groups (METHOD.md item 2): the expanded (hidden) width of each inverted
residual. One gate vector is applied twice -- after the 1x1 expansion (BN-ReLU6)
and after the depthwise conv (BN-ReLU6) -- by calling the same gate layer twice, so
that with hard gates a removed channel is zero wherever a convolution reads it.
"""

import keras

from pn_tf.models.common import (
    CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, classifier_head, conv_bn, dwconv_bn,
    image_input, make_gate, resolve_widths,
)

# (expansion t, output channels c, repeats n, first stride s)
IMAGENET_SPEC = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                 (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# NPPM's CIFAR-10 variant: stride-1 stem, two stride-2 stages (METHOD.md item 3).
CIFAR_SPEC = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 1), (6, 64, 4, 2),
              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

VARIANTS = {
    # name: (spec, stem stride, keep the 1x1 expansion where t == 1, conv shortcut
    #        when stride is 1 and the width changes, default statistics)
    "imagenet": (IMAGENET_SPEC, 2, False, False, IMAGENET_MEAN, IMAGENET_STD),
    "cifar": (CIFAR_SPEC, 1, True, True, CIFAR_MEAN, CIFAR_STD),
}
STEM_WIDTH = 32
LAST_WIDTH = 1280


def _variant(variant):
    if variant not in VARIANTS:
        raise ValueError(f"MobileNetV2 variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def mobilenetv2_group_widths(variant="imagenet"):
    spec = _variant(variant)[0]
    widths, in_width = [], STEM_WIDTH
    for t, c, n, _ in spec:
        for _ in range(n):
            widths.append(in_width * t)
            in_width = c
    return widths


def mobilenetv2(input_shape=(224, 224, 3), num_classes=1000, variant="imagenet", widths=None,
                mean=None, std=None, dropout=0.0, name=None):
    """MobileNetV2 (width 1.0) with one gate per inverted residual block.

    Args:
        input_shape: tuple of ints. (height, width, channels) of the images.
        num_classes: int. Size of the classifier.
        variant: str. ``"imagenet"`` (the original network, 300.8M MACs at 224) or
            ``"cifar"`` (NPPM's CIFAR-10 network, 304.08M MACs at 32).
        widths: list of ints or None. Hidden width of each block, in order.
        mean, std: per-channel pixel statistics (default: the variant's dataset).
        dropout: float. Dropout before the classifier.
        name: str. Model name.

    Example:

    >>> model = mobilenetv2(input_shape=(32, 32, 3), num_classes=10, variant="cifar")
    """
    spec, stem_stride, keep_t1_expand, conv_shortcut, d_mean, d_std = _variant(variant)
    name = name or ("mobilenetv2" if variant == "imagenet" else "mobilenetv2_cifar")
    hidden = resolve_widths(mobilenetv2_group_widths(variant), widths, name)
    # Without an expansion conv in block 1, its hidden channels are the stem's outputs.
    stem_width = STEM_WIDTH if keep_t1_expand or spec[0][0] != 1 else hidden[0]
    hidden = iter(hidden)
    inputs, x = image_input(input_shape, mean or d_mean, std or d_std, name)
    x = conv_bn(x, stem_width, 3, stem_stride, name="stem", activation="relu6")
    index = 0
    for t, c, n, s in spec:
        for i in range(n):
            index += 1
            x = _inverted_residual(
                x, next(hidden), c, s if i == 0 else 1, expand=(t != 1 or keep_t1_expand),
                conv_shortcut=conv_shortcut, name=f"block{index}",
            )
    x = conv_bn(x, LAST_WIDTH, 1, name="head", activation="relu6")
    outputs = classifier_head(x, num_classes, dropout=dropout)
    return keras.Model(inputs, outputs, name=name)


def mobilenetv2_cifar(input_shape=(32, 32, 3), num_classes=10, **kwargs):
    return mobilenetv2(input_shape=input_shape, num_classes=num_classes, variant="cifar", **kwargs)


def _inverted_residual(x, hidden, out_width, strides, expand, conv_shortcut, name):
    gate = make_gate(name)
    in_width = x.shape[-1]
    y = x
    if expand:
        y = conv_bn(y, hidden, 1, name=f"{name}_expand", activation="relu6")
    elif hidden != in_width:
        raise ValueError(f"{name}: without an expansion conv the hidden width is the input width")
    y = gate(y)
    y = dwconv_bn(y, 3, strides, name=f"{name}_dw", activation="relu6")
    y = gate(y)
    y = conv_bn(y, out_width, 1, name=f"{name}_project", activation=None)
    if strides != 1:
        return y
    if in_width == out_width:
        return keras.layers.Add(name=f"{name}_add")([y, x])
    if conv_shortcut:
        shortcut = conv_bn(x, out_width, 1, name=f"{name}_shortcut", activation=None)
        return keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return y
