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


# -- keras-hub's image models (the optional extra: pip install -e ".[hub]") -----------------------
# Small configurations built from constructor arguments with random weights: nothing is
# downloaded. Each builder imports keras_hub when called; without it, it raises ImportError.

def _keras_hub():
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError("keras-hub is not installed (pip install -e \".[hub]\"): the keras-hub rows "
                          f"are skipped ({error})") from None
    return keras_hub.models


def _classifier(backbone, features, size, classes, name, pool="avg"):
    """A user's classifier head on a keras-hub backbone: image -> backbone -> pooled features -> Dense.
    ``features`` picks the backbone output (a pyramid's last stage); ``pool`` "avg" pools feature maps
    or tokens, "token" takes the first token."""
    inputs = keras.Input((size, size, 3))
    x = backbone(inputs)
    x = features(x) if callable(features) else x
    if pool == "token":
        x = x[:, 0]
    elif len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D()(x)
    else:
        x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name=name)


def hub_mobilenetv3(size=96, classes=10):
    """keras-hub MobileNetBackbone in the MobileNetV3-small layout of its docstring."""
    backbone = _keras_hub().MobileNetBackbone(
        stackwise_expansion=[[40, 56], [64, 144, 144], [72, 72], [144, 288, 288]],
        stackwise_num_blocks=[2, 3, 2, 3],
        stackwise_num_filters=[[16, 16], [24, 24, 24], [24, 24], [48, 48, 48]],
        stackwise_kernel_size=[[3, 3], [5, 5, 5], [5, 5], [5, 5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1, 1], [1, 1], [2, 1, 1]],
        stackwise_se_ratio=[[None, None], [0.25, 0.25, 0.25], [0.3, 0.3], [0.3, 0.25, 0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish"] * 3, ["hard_swish"] * 2, ["hard_swish"] * 3],
        stackwise_padding=[[1, 1], [2, 2, 2], [2, 2], [2, 2, 2]],
        output_num_filters=288, depthwise_filters=8, depthwise_stride=2, depthwise_residual=False,
        squeeze_and_excite=0.5, last_layer_filter=288, image_shape=(size, size, 3))
    return _classifier(backbone, None, size, classes, "hub_mobilenetv3")


def hub_hgnetv2(size=96, classes=10):
    """keras-hub HGNetV2Backbone, 3 stages (the last with light-weight conv blocks), pyramid's last stage."""
    backbone = _keras_hub().HGNetV2Backbone(
        depths=[1, 1, 2], embedding_size=16, hidden_sizes=[32, 64, 128], stem_channels=[3, 8, 16],
        hidden_act="relu", use_learnable_affine_block=False,
        stackwise_stage_filters=[(16, 8, 32, 1, 1, 3), (32, 16, 64, 1, 1, 3), (64, 32, 128, 2, 1, 3)],
        apply_downsample=[False, True, True], use_lightweight_conv_block=[False, False, True],
        image_shape=(size, size, 3))
    return _classifier(backbone, lambda y: y["stage3"], size, classes, "hub_hgnetv2")


def _vit(size):
    return _keras_hub().ViTBackbone(image_shape=(size, size, 3), patch_size=8, num_layers=2, num_heads=4,
                                    hidden_dim=64, mlp_dim=128)


def hub_vit(size=96, classes=10):
    """keras-hub ViTBackbone (patch 8, 2 layers, 4 heads, width 64, MLP 128), class token pooled."""
    return _classifier(_vit(size), None, size, classes, "hub_vit", pool="token")


def hub_vit_classifier(size=96, classes=10):
    """keras-hub ViTImageClassifier on that ViTBackbone, as keras-hub builds it."""
    return _keras_hub().ViTImageClassifier(backbone=_vit(size), num_classes=classes)


def hub_deit(size=96, classes=10):
    """keras-hub DeiTBackbone (patch 8, 2 layers, 4 heads, width 64, MLP 128)."""
    backbone = _keras_hub().DeiTBackbone(image_shape=(size, size, 3), patch_size=8, num_layers=2,
                                         num_heads=4, hidden_dim=64, intermediate_dim=128)
    return _classifier(backbone, None, size, classes, "hub_deit", pool="token")


def hub_dinov2(size=96, classes=10):
    """keras-hub DINOV2Backbone (patch 7, 2 layers, 4 heads, width 64, MLP 128, layer scale), at the
    multiple of 7 nearest ``size`` (98 for 96)."""
    size = max(7, 7 * round(size / 7))
    backbone = _keras_hub().DINOV2Backbone(patch_size=7, num_layers=2, hidden_dim=64, num_heads=4,
                                           intermediate_dim=128, image_shape=(size, size, 3),
                                           position_embedding_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = backbone({"images": inputs})[:, 0]
    return keras.Model(inputs, layers.Dense(classes)(x), name="hub_dinov2")


def hub_swin(size=96, classes=10):
    """keras-hub SwinTransformerBackbone (patch 4, width 32, depths (2, 2), heads (2, 4), window 6)."""
    backbone = _keras_hub().SwinTransformerBackbone(image_shape=(size, size, 3), embed_dim=32, depths=(2, 2),
                                                    num_heads=(2, 4), window_size=6, patch_size=4,
                                                    drop_path=0.0)
    return _classifier(backbone, None, size, classes, "hub_swin")


def hub_mit(size=96, classes=10):
    """keras-hub MiTBackbone (SegFormer's encoder: 2 stages of widths 32, 64, heads 1, 2)."""
    backbone = _keras_hub().MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2], layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2],
        image_shape=(size, size, 3), hidden_dims=[32, 64])
    return _classifier(backbone, None, size, classes, "hub_mit")


# Row name -> (builder, description, the least share of MACs in prunable groups the issue asks).
HUB = {
    "hub_mobilenetv3": (hub_mobilenetv3, "keras-hub MobileNetBackbone (MobileNetV3 small layout) + head", 0.85),
    "hub_hgnetv2": (hub_hgnetv2, "keras-hub HGNetV2Backbone (3 stages) + head", 0.85),
    "hub_vit": (hub_vit, "keras-hub ViTBackbone (patch 8, 2 layers, 4 heads) + class-token head", 0.85),
    "hub_vit_classifier": (hub_vit_classifier, "keras-hub ViTImageClassifier on that backbone", 0.85),
    "hub_deit": (hub_deit, "keras-hub DeiTBackbone (patch 8, 2 layers, 4 heads) + class-token head", 0.85),
    "hub_dinov2": (hub_dinov2, "keras-hub DINOV2Backbone (patch 7, 2 layers, layer scale) + head", 0.85),
    "hub_swin": (hub_swin, "keras-hub SwinTransformerBackbone (2 stages, window 6) + head", 0.50),
    "hub_mit": (hub_mit, "keras-hub MiTBackbone (SegFormer encoder, 2 stages) + head", 0.50),
}
