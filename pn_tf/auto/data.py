"""Image-folder input for :func:`pn_tf.auto.prune`."""

import os

import keras


def image_folder_dataset(directory, image_size, batch_size, seed=0, take=None):
    """Labelled images from ``directory/<class>/*`` as float pixels 0..255."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image folder {directory!r} does not exist")
    ds = keras.utils.image_dataset_from_directory(
        directory, labels="inferred", label_mode="int", image_size=tuple(image_size),
        batch_size=batch_size, shuffle=True, seed=seed)
    if take is not None:
        ds = ds.unbatch().take(take).batch(batch_size)
    return ds
