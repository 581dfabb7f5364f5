"""The architecture zoo: every builder returns a functional keras.Model with gates.

``build_model(name, ...)`` is the one entry point the pipeline and tools use.
"""

from pn_tf.models.mobilenetv2 import mobilenetv2, mobilenetv2_cifar
from pn_tf.models.resnet import resnet, resnet34, resnet50, resnet101
from pn_tf.models.resnet_cifar import resnet56, resnet_cifar
from pn_tf.models.shufflenetv2plus import shufflenetv2plus

# name -> (builder, default input size, default number of classes)
ARCHITECTURES = {
    "resnet56": (resnet56, 32, 10),
    "mobilenetv2_cifar": (mobilenetv2_cifar, 32, 10),
    "resnet34": (resnet34, 224, 1000),
    "resnet50": (resnet50, 224, 1000),
    "resnet101": (resnet101, 224, 1000),
    "mobilenetv2": (mobilenetv2, 224, 1000),
}

for _size in ("Large", "Medium", "Small"):
    ARCHITECTURES[f"shufflenetv2plus_{_size.lower()}"] = (
        (lambda size: lambda **kw: shufflenetv2plus(size=size, **kw))(_size), 224, 1000)
ARCHITECTURES["shufflenetv2plus"] = ARCHITECTURES["shufflenetv2plus_large"]


def build_model(name, input_size=None, num_classes=None, **kwargs):
    """Builds a zoo architecture by name.

    Args:
        name: str. One of ``ARCHITECTURES``.
        input_size: int or None. Square input side (default: the architecture's).
        num_classes: int or None. Classifier size (default: the architecture's).
        **kwargs: passed to the builder (``widths``, ``mean``, ``std``, ...).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    builder, default_size, default_classes = ARCHITECTURES[name]
    size = int(input_size or default_size)
    if size < 8:
        raise ValueError(f"input_size must be >= 8, got {size}")
    return builder(input_shape=(size, size, 3), num_classes=int(num_classes or default_classes), **kwargs)


__all__ = ["ARCHITECTURES", "build_model", "mobilenetv2", "mobilenetv2_cifar", "resnet", "resnet34",
           "resnet50", "resnet101", "resnet56", "resnet_cifar", "shufflenetv2plus"]
