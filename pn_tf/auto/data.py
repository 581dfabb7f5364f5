"""Image-folder input for :func:`pn_tf.auto.prune`."""


def image_folder_dataset(directory, image_size, batch_size, seed=0, take=None):
    """Labelled, augmented images of ``directory/<class>/*`` as float pixels 0..255.

    Read by :mod:`pn_tf.image_folder` (the pipeline's reader): unreadable files are skipped
    with a warning; a folder with fewer than two classes or no readable image is refused.
    """
    from pn_tf.image_folder import folder_dataset, scan

    return folder_dataset(scan(directory), "train", batch_size, int(image_size[0]), training=True,
                          seed=seed, take=take)
