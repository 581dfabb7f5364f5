"""Models built the way users build them, for the coverage table and the tests.

Each builder returns an untrained Keras model, written as a user would write it
(Sequential, a nested backbone, 1-D audio convolutions, a U-Net, ...); its ``size`` is
the image side, or the number of frames of a 1-D model.
``PATTERNS`` maps a row name of ``tools/coverage.py`` to ``(builder, description)``.
"""

import keras
import numpy as np
from keras import layers


def sequential_cnn(size=96, classes=10):
    """A plain ``keras.Sequential`` CNN, with a nested Sequential block inside."""
    block = keras.Sequential([layers.Conv2D(64, 3, padding="same", use_bias=False),
                              layers.BatchNormalization(), layers.ReLU()], name="block")
    return keras.Sequential([
        keras.Input((size, size, 3)),
        layers.Rescaling(1 / 255.0),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        block,
        layers.MaxPooling2D(),
        layers.Conv2D(128, 3, padding="same"),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dropout(0.2),
        layers.Dense(classes),
    ], name="sequential_cnn")


def nested_mobilenetv2(size=96, classes=10, alpha=0.35):
    """Transfer learning: MobileNetV2 (no top) called as one layer, frozen BN, a new head."""
    backbone = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                              include_top=False, weights=None)
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = backbone(x, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="nested_mobilenetv2")


def kws_conv1d(size=96, features=40, classes=12):
    """Keyword spotting on (frames, MFCC) features: Conv1D, SeparableConv1D, DepthwiseConv1D,
    a residual add and 1-D pooling, padding, cropping and upsampling."""
    inputs = keras.Input((size, features))
    x = layers.Conv1D(64, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for k in range(2):
        y = layers.SeparableConv1D(64, 5, padding="same", use_bias=False)(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.DepthwiseConv1D(3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.Conv1D(64, 1, use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.MaxPooling1D(2)(x)
    x = layers.ZeroPadding1D(1)(x)
    x = layers.Conv1D(96, 3, activation="relu")(x)
    x = layers.AveragePooling1D(2)(x)
    x = layers.UpSampling1D(2)(x)
    x = layers.Cropping1D((1, 1))(x)
    x = layers.Conv1D(96, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="kws_conv1d")


def autoencoder_conv1d(size=96, channels=8):
    """A 1-D denoising autoencoder: strided Conv1D down, Conv1DTranspose up."""
    inputs = keras.Input((size, channels))
    x = layers.Conv1D(32, 5, strides=2, padding="same", activation="relu")(inputs)
    x = layers.Conv1D(64, 5, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv1DTranspose(32, 5, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv1DTranspose(32, 5, strides=2, padding="same", activation="relu")(x)
    return keras.Model(inputs, layers.Conv1D(channels, 3, padding="same")(x), name="autoencoder_conv1d")


def unet(size=96, classes=3):
    """A small U-Net for segmentation: Conv2DTranspose up-sampling, skip concatenations."""
    def block(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        return x

    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255.0)(inputs)
    skips = []
    for filters in (16, 32, 64):
        x = block(x, filters)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, 128)
    for filters, skip in zip((64, 32, 16), reversed(skips)):
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skip])
        x = block(x, filters)
    return keras.Model(inputs, layers.Conv2D(classes, 1)(x), name="unet")


def groupnorm_cnn(size=96, classes=10):
    """A CNN normalized with GroupNormalization (whole groups of channels go together)."""
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255.0)(inputs)
    for filters, groups in ((32, 16), (64, 32), (64, 16), (128, 32)):
        x = layers.Conv2D(filters, 3, strides=2, padding="same")(x)
        x = layers.GroupNormalization(groups)(x)
        x = layers.Activation("swish")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="groupnorm_cnn")


def shared_block(size=96, classes=10):
    """One functional block model called twice (shared weights) and a Siamese-style merge."""
    block_in = keras.Input((None, None, 32))
    y = layers.Conv2D(48, 3, padding="same", activation="relu", name="shared_conv_a")(block_in)
    y = layers.Conv2D(32, 3, padding="same", name="shared_conv_b")(y)
    block = keras.Model(block_in, layers.ReLU(name="shared_relu")(y), name="block")
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(inputs)
    a = block(x)
    b = block(layers.MaxPooling2D(1)(x))
    x = layers.Add()([a, b])
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="shared_block")


def ops_cnn(size=96, classes=10):
    """``keras.ops`` in the graph: h-swish written with ops, a per-channel constant scale."""
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(32, 3, strides=2, padding="same")(inputs / 255.0)
    x = x * (keras.ops.relu6(x + 3.0) / 6.0)
    x = layers.Conv2D(48, 3, strides=2, padding="same")(x)
    x = keras.ops.relu(x) * np.linspace(0.5, 1.5, 48).astype("float32")
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(layers.MaxPooling2D(4)(x))
    x = layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="ops_cnn")


def video_conv3d(size=96, frames=8, classes=10):
    """A small video classifier: Conv3D and 3-D pooling."""
    inputs = keras.Input((frames, size, size, 3))
    x = layers.Conv3D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling3D((1, 2, 2))(x)
    x = layers.Conv3D(32, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling3D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="video_conv3d")


def vit(size=96, classes=10, tokens=8, width=64, depth=2, heads=4, mlp=256):
    """A small functional ViT: a patch Conv2D to ``tokens`` x ``tokens`` tokens of ``width``, then
    ``depth`` pre-norm blocks (LayerNormalization, MultiHeadAttention with ``heads`` heads of
    ``width / heads``, a residual Add; LayerNormalization, a gelu MLP of ``mlp``, a residual Add),
    average pooling over the tokens and a Dense head."""
    patch = size // tokens
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(width, patch, strides=patch, name="patches")(x)
    x = layers.Reshape((tokens * tokens, width))(x)
    for b in range(depth):
        y = layers.LayerNormalization(epsilon=1e-6)(x)
        y = layers.MultiHeadAttention(heads, width // heads, name=f"attention{b}")(y, y)
        x = layers.Add()([x, y])
        y = layers.LayerNormalization(epsilon=1e-6)(x)
        y = layers.Dense(mlp, activation="gelu", name=f"mlp{b}_in")(y)
        x = layers.Add()([x, layers.Dense(width, name=f"mlp{b}_out")(y)])
    x = layers.GlobalAveragePooling1D()(layers.LayerNormalization(epsilon=1e-6)(x))
    return keras.Model(inputs, layers.Dense(classes, name="head")(x), name="vit")


PATTERNS = {
    "sequential_cnn": (sequential_cnn, "keras.Sequential CNN with a nested Sequential block"),
    "nested_mobilenetv2": (nested_mobilenetv2, "MobileNetV2 (alpha 0.35) nested in a classifier"),
    "kws_conv1d": (kws_conv1d, "Conv1D / SeparableConv1D / DepthwiseConv1D keyword spotter"),
    "autoencoder_conv1d": (autoencoder_conv1d, "Conv1D / Conv1DTranspose autoencoder"),
    "unet": (unet, "U-Net with Conv2DTranspose and skip concatenations"),
    "groupnorm_cnn": (groupnorm_cnn, "CNN with GroupNormalization"),
    "shared_block": (shared_block, "a block model called twice (shared weights)"),
    "ops_cnn": (ops_cnn, "keras.ops nodes: h-swish, per-channel constant, Flatten->Dense"),
    "video_conv3d": (video_conv3d, "Conv3D video classifier"),
    "vit": (vit, "functional ViT: patch Conv2D, 2 pre-norm blocks of MultiHeadAttention (4 heads) "
                 "and a gelu MLP"),
}


# One architecture per keras.applications family (the coverage table's rows).
APPLICATIONS = {
    "ConvNeXt": "ConvNeXtTiny",
    "DenseNet": "DenseNet121",
    "EfficientNet": "EfficientNetB0",
    "EfficientNetV2": "EfficientNetV2B0",
    "InceptionV3": "InceptionV3",
    "InceptionResNetV2": "InceptionResNetV2",
    "MobileNet": "MobileNet",
    "MobileNetV2": "MobileNetV2",
    "MobileNetV3": "MobileNetV3Small",
    "NASNetMobile": "NASNetMobile",
    "ResNet": "ResNet50",
    "ResNetV2": "ResNet50V2",
    "VGG": "VGG16",
    "Xception": "Xception",
}


def application(name, size=96, classes=10):
    """``keras.applications.<name>`` with random weights, logits out, at ``size`` pixels.

    Raises KeyError for a name keras.applications does not have.
    """
    builder = getattr(keras.applications, name, None)
    if builder is None or not callable(builder) or name.startswith("_"):
        raise KeyError(name)
    return builder(weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None)
