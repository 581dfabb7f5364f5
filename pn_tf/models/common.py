"""Building blocks shared by the zoo builders."""

import keras

from pn_tf.layers import ChannelGate, batchnorm

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def image_input(input_shape, mean, std, name):
    """The model input (float pixels 0..255) followed by per-channel standardisation.

    Normalising inside the model means an exported TFLite file takes raw pixels.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    inputs = keras.Input(shape=tuple(input_shape), name=f"{name}_input" if name else None)
    variance = [s * s for s in std]
    x = keras.layers.Normalization(mean=list(mean), variance=variance, name="normalize")(inputs)
    return inputs, x


def conv_bn(x, filters, kernel_size, strides=1, name="", activation="relu", groups=1):
    """Conv (no bias) -> BN -> optional activation, with torch-style symmetric padding.

    Strided convolutions pad explicitly so that the arithmetic matches the
    reference PyTorch models exactly (TF's "same" pads asymmetrically).
    """
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False,
        groups=groups, name=f"{name}_conv",
    )(x)
    return bn_act(x, name, activation)


def dwconv_bn(x, kernel_size, strides=1, name="", activation="relu"):
    """Depthwise conv (no bias) -> BN -> optional activation."""
    padding = "same"
    if strides > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    x = keras.layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{name}_dwconv"
    )(x)
    return bn_act(x, name, activation)


def bn_act(x, name, activation):
    x = batchnorm.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    if activation:
        x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def make_gate(name):
    return ChannelGate(name=f"{name}_gate")


def resolve_widths(defaults, widths, arch):
    """Per-group widths: the architecture's defaults, or a full override list."""
    if widths is None:
        return list(defaults)
    widths = [int(w) for w in widths]
    if len(widths) != len(defaults):
        raise ValueError(
            f"{arch}: widths needs one entry per prunable group ({len(defaults)}), got {len(widths)}"
        )
    bad = [(i, w, d) for i, (w, d) in enumerate(zip(widths, defaults)) if not 1 <= w <= d]
    if bad:
        raise ValueError(f"{arch}: widths must lie in [1, default]; bad (index, width, default): {bad}")
    return widths


def classifier_head(x, num_classes, name="classifier", dropout=0.0):
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, name=name)(x)

CIFAR_MEAN = (125.307, 122.961, 113.866)
CIFAR_STD = (62.993, 62.089, 66.705)
