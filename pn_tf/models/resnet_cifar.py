"""CIFAR ResNets with option-A shortcuts (He et al., CVPR 2016, section 4.2).

``resnet56`` is the network of the PN paper's CIFAR-10 experiments: three stages of
nine basic blocks at widths 16/32/64, 125.49M multiply-accumulates at 32x32.
Prunable groups (METHOD.md item 2): the inner channels of each block, gated after
conv1-BN-ReLU; block outputs are tied by the identity shortcuts and are not pruned.
"""

import keras

from pn_tf.layers import ChannelZeroPad
from pn_tf.models.common import CIFAR_MEAN, CIFAR_STD, conv_bn, image_input, make_gate, resolve_widths

STAGE_WIDTHS = (16, 32, 64)


def resnet_cifar_group_widths(depth, stage_widths=STAGE_WIDTHS):
    """The default inner width of every block: its stage's stream width."""
    blocks = _blocks_per_stage(depth)
    return [int(w) for w in stage_widths for _ in range(blocks)]


def _blocks_per_stage(depth):
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110...), got {depth}")
    return (depth - 2) // 6


def resnet_cifar(depth=56, input_shape=(32, 32, 3), num_classes=10, widths=None,
                 mean=CIFAR_MEAN, std=CIFAR_STD, name=None, stage_widths=STAGE_WIDTHS):
    """A CIFAR ResNet of depth 6n+2 with a gate inside every basic block.

    Args:
        depth: int. 6n + 2; 56 gives ResNet-56.
        input_shape: tuple of ints. (height, width, channels) of the images.
        num_classes: int. Size of the classifier.
        widths: list of ints or None. Inner width of each block, in order
            (default: the stage width); builds a physically narrower network.
        mean, std: per-channel pixel statistics used by the input normalisation.
        name: str. Model name (default ``resnet{depth}``).
        stage_widths: three ints, the residual stream width of each stage (default
            16/32/64). Not a pruning target (the zoo gates inner widths only); for
            experiments with narrower streams (tools/bench_resnet_widths.py).

    Example:

    >>> model = resnet_cifar(56)
    >>> model.output.shape
    (None, 10)
    """
    name = name or f"resnet{depth}"
    if len(stage_widths) != 3 or any(int(w) < 1 for w in stage_widths):
        raise ValueError(f"stage_widths needs three positive ints, got {stage_widths!r}")
    stage_widths = [int(w) for w in stage_widths]
    blocks = _blocks_per_stage(depth)
    inner = resolve_widths(resnet_cifar_group_widths(depth, stage_widths), widths, name)
    inputs, x = image_input(input_shape, mean, std, name)
    x = conv_bn(x, stage_widths[0], 3, name="stem")
    index = 0
    for stage, width in enumerate(stage_widths):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block_a(x, width, inner[index], strides, f"stage{stage + 1}_block{block + 1}")
            index += 1
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet56(**kwargs):
    return resnet_cifar(56, **kwargs)


def _basic_block_a(x, width, inner_width, strides, name):
    shortcut = x
    y = conv_bn(x, inner_width, 3, strides, name=f"{name}_1")
    y = make_gate(name)(y)
    y = conv_bn(y, width, 3, name=f"{name}_2", activation=None)
    in_width = x.shape[-1]
    if strides > 1 or in_width != width:
        # Option A: subsample by 2 (a 1x1 max pool takes every other pixel) and
        # zero-pad the new channels evenly on both sides.
        if strides > 1:
            shortcut = keras.layers.MaxPooling2D(1, strides, name=f"{name}_subsample")(shortcut)
        extra = width - in_width
        shortcut = ChannelZeroPad(extra // 2, extra - extra // 2, name=f"{name}_pad_channels")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)
