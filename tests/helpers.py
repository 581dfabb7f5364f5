"""Round-trip and equivalence helpers shared by the tests."""

import numpy as np
import keras

from pn_tf.coverage.check import randomize_batchnorm  # noqa: F401 -- shared with the tests


def random_images(shape, seed=0, batch=2):
    """Float pixels in [0, 255], as the data pipeline yields them."""
    return np.random.RandomState(seed).uniform(0, 255, (batch,) + tuple(shape)).astype("float32")


def conv_act_conv(activation):
    """conv -> ``activation(x)`` -> conv on 16x16 pixels, so the activation's output is an inner
    tensor (int8 calibration tests)."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 32.0, offset=-4.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=0))(x)
    x = activation(x)
    x = keras.layers.Conv2D(8, 1, name="conv2",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=1))(x)
    return keras.Model(inputs, x)


def save_load(model, tmp_path):
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    return keras.saving.load_model(path)


def real_images(data_dir, name, size, count=8):
    """``count`` real test-split images of dataset ``name`` at ``size`` pixels."""
    from pn_tf.data import make_dataset

    ds = make_dataset(name, "test", batch_size=count, training=False, image_size=size,
                      data_dir=data_dir, take=count)
    images, _ = next(iter(ds))
    return images.numpy()
