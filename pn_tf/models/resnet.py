"""ImageNet-style ResNets (He et al., CVPR 2016), torchvision layout (stride on the 3x3).

Architectures are spec rows read by one builder. Prunable groups (METHOD.md item 2):
the inner widths of each block -- one gate per basic block (after conv1), two per
bottleneck (after conv1 and after conv2). The residual stream is not pruned.
"""

import keras

from pn_tf.models.common import (
    IMAGENET_MEAN, IMAGENET_STD, classifier_head, conv_bn, image_input, make_gate, resolve_widths,
)

# depth -> (block kind, blocks per stage)
RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}
GATES_PER_BLOCK = {"basic": 1, "bottleneck": 2}


def _spec(depth):
    if depth not in RESNET_SPECS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
    return RESNET_SPECS[depth]


def resnet_group_widths(depth):
    kind, blocks = _spec(depth)
    return [w for w, n in zip(STAGE_WIDTHS, blocks) for _ in range(n * GATES_PER_BLOCK[kind])]


def resnet(depth=50, input_shape=(224, 224, 3), num_classes=1000, widths=None,
           mean=IMAGENET_MEAN, std=IMAGENET_STD, name=None):
    """An ImageNet ResNet with gates on the inner widths of every block.

    Args:
        depth: int. One of 18, 34, 50, 101, 152.
        input_shape: tuple of ints. (height, width, channels); any size >= 32.
        num_classes: int. Size of the classifier.
        widths: list of ints or None. Inner widths in gate order (per bottleneck:
            conv1's then conv2's); builds a physically narrower network.
        mean, std: per-channel pixel statistics used by the input normalisation.
        name: str. Model name (default ``resnet{depth}``).

    Example:

    >>> model = resnet(50, input_shape=(64, 64, 3), num_classes=10)
    """
    name = name or f"resnet{depth}"
    kind, blocks = _spec(depth)
    inner = iter(resolve_widths(resnet_group_widths(depth), widths, name))
    inputs, x = image_input(input_shape, mean, std, name)
    x = conv_bn(x, 64, 7, 2, name="stem")
    x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = keras.layers.MaxPooling2D(3, 2, name="stem_pool")(x)
    block_fn = _basic_block if kind == "basic" else _bottleneck_block
    for stage, (width, count) in enumerate(zip(STAGE_WIDTHS, blocks)):
        for block in range(count):
            strides = 2 if stage > 0 and block == 0 else 1
            x = block_fn(x, width, inner, strides, f"stage{stage + 1}_block{block + 1}")
    outputs = classifier_head(x, num_classes)
    return keras.Model(inputs, outputs, name=name)


def resnet34(**kwargs):
    return resnet(34, **kwargs)


def resnet50(**kwargs):
    return resnet(50, **kwargs)


def resnet101(**kwargs):
    return resnet(101, **kwargs)


def _shortcut(x, out_width, strides, name):
    if strides == 1 and x.shape[-1] == out_width:
        return x
    return conv_bn(x, out_width, 1, strides, name=f"{name}_down", activation=None)


def _basic_block(x, width, inner, strides, name):
    shortcut = _shortcut(x, width, strides, name)
    y = conv_bn(x, next(inner), 3, strides, name=f"{name}_1")
    y = make_gate(f"{name}_1")(y)
    y = conv_bn(y, width, 3, name=f"{name}_2", activation=None)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def _bottleneck_block(x, width, inner, strides, name):
    out_width = width * EXPANSION["bottleneck"]
    shortcut = _shortcut(x, out_width, strides, name)
    y = conv_bn(x, next(inner), 1, name=f"{name}_1")
    y = make_gate(f"{name}_1")(y)
    y = conv_bn(y, next(inner), 3, strides, name=f"{name}_2")
    y = make_gate(f"{name}_2")(y)
    y = conv_bn(y, out_width, 1, name=f"{name}_3", activation=None)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)
