"""A folder of images as a dataset: one sub-folder per class, JPEG or PNG files.

:func:`scan` reads the folder once: the classes (sorted sub-folder names), every image
file, and the files that cannot be read (skipped, with their reason, so that a run
never fails hours in on a broken file). :func:`split_of` puts each file in the held-out
split or the training split by a hash of its path relative to the folder: the decision
is per file, so adding or removing other files never moves a file between the splits.
:func:`folder_dataset` yields batches of ``(float32 pixels 0..255, int32 labels)``, as
:func:`pn_tf.data.make_dataset` does for TFDS datasets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
HOLDOUT_FRACTION = 0.1


class ImageFolderError(ValueError):
    """The folder cannot serve as a dataset (the message says what to fix)."""


@dataclasses.dataclass
class ImageFolder:
    """What :func:`scan` found.

    Attributes:
        root: the folder.
        class_names: sorted sub-folder names; label k is ``class_names[k]``.
        files: ``(path, label)`` of every readable image, in sorted order.
        skipped: ``(path, reason)`` of the image files that could not be read.
    """

    root: str
    class_names: list
    files: list
    skipped: list

    def split(self, split, holdout_fraction=HOLDOUT_FRACTION):
        """``(path, label)`` of ``split``: ``"train"`` (all), ``"train_main"`` or ``"holdout"``."""
        if split == "train":
            return list(self.files)
        if split not in ("train_main", "holdout"):
            raise ValueError(f"an image folder has splits train, train_main and holdout, not {split!r}")
        want = split == "holdout"
        return [(path, label) for path, label in self.files
                if (split_of(os.path.relpath(path, self.root), holdout_fraction) == "holdout") == want]


def split_of(relative_path, holdout_fraction=HOLDOUT_FRACTION):
    """``"holdout"`` or ``"train_main"`` for one file, from a hash of its relative path."""
    key = relative_path.replace(os.sep, "/").encode("utf-8")
    draw = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64
    return "holdout" if draw < holdout_fraction else "train_main"


def _unreadable(path):
    """Why ``path`` is not a readable image, or "" if it is."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return ""


def scan(directory, check=True):
    """Reads ``directory``'s classes and images; see :class:`ImageFolder`.

    Args:
        directory: the folder, with one sub-folder per class.
        check: open every image file's header and skip the unreadable ones (with a warning).

    Raises:
        ImageFolderError: the folder does not exist, has fewer than two classes with
            images, or no readable image.
    """
    if not os.path.isdir(directory):
        raise ImageFolderError(f"image folder {directory!r} does not exist")
    root = os.path.abspath(directory)
    # Every sub-folder is a class, in sorted order, as keras.utils.image_dataset_from_directory
    # numbers them: a model trained on that labelling keeps its label order here.
    class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if len(class_names) < 2:
        raise ImageFolderError(
            f"image folder {directory!r} needs at least two class sub-folders (found "
            f"{len(class_names)}: {class_names or 'none'}); put each class's images in its own "
            "sub-folder")
    found = {}
    for name in class_names:
        folder = os.path.join(root, name)
        found[name] = sorted(os.path.join(dirpath, f) for dirpath, _, names in os.walk(folder)
                             for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
    empty = [name for name in class_names if not found[name]]
    if empty:
        log.warning("image folder %s: class sub-folder(s) %s hold no JPEG or PNG image", directory, empty)
    files, skipped = [], []
    for label, name in enumerate(class_names):
        for path in found[name]:
            reason = _unreadable(path) if check else ""
            if reason:
                skipped.append((path, reason))
            else:
                files.append((path, label))
    if skipped:
        log.warning("skipping %d unreadable image file(s) in %s, e.g. %s (%s)", len(skipped),
                    directory, skipped[0][0], skipped[0][1])
    if not files:
        raise ImageFolderError(f"image folder {directory!r} holds no readable image "
                               f"({len(skipped)} unreadable file(s))")
    return ImageFolder(root, class_names, files, skipped)


def _decode(path, size, training, key=None):
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False, dtype=tf.uint8)
    image = tf.cast(image, tf.float32)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    # Shorter side to size / 0.875, then a centre (evaluation) or random (training) square.
    scale = (size / 0.875) / tf.reduce_min(hw)
    image = tf.image.resize(image, tf.cast(tf.round(hw * scale), tf.int32), antialias=True)
    if training:
        image = tf.image.stateless_random_crop(image, [size, size, 3], seed=key)
        image = tf.image.stateless_random_flip_left_right(image, seed=key + 1)
    else:
        image = tf.image.resize_with_crop_or_pad(image, size, size)
    return tf.clip_by_value(image, 0.0, 255.0)


def folder_dataset(folder, split, batch_size, image_size, training, seed=0, take=None,
                   holdout_fraction=HOLDOUT_FRACTION):
    """Batched ``(float32 images [B, S, S, 3] in 0..255, int32 labels)`` of one split.

    Training shuffles and augments (random square crop of the image resized to S / 0.875
    on its shorter side, horizontal flip); evaluation takes the centre square. A file
    that fails to decode even so is dropped (``ignore_errors``), never a crash mid-run.
    """
    import tensorflow as tf

    if not isinstance(folder, ImageFolder):
        folder = scan(folder)
    items = folder.split(split, holdout_fraction)
    if take is not None:
        items = items[:take]
    if not items:
        raise ImageFolderError(f"split {split!r} of {folder.root!r} is empty; add images")
    paths = tf.constant([p for p, _ in items])
    labels = tf.constant([label for _, label in items], tf.int32)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if training:
        ds = ds.shuffle(len(items), seed=seed, reshuffle_each_iteration=True)
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, draws).map(
            lambda xy, r: (_decode(xy[0], image_size, True, tf.stack([tf.cast(r, tf.int32), seed])),
                           xy[1]), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda p, y: (_decode(p, image_size, False), y), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors()
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def write_image_folder(examples, class_names, directory, quality=95):
    """Writes ``(uint8 image [H, W, 3], label)`` pairs as ``directory/<class>/<k>.jpg``.

    Returns the number of files written. Existing files of the same names are replaced.
    """
    from PIL import Image

    for name in class_names:
        os.makedirs(os.path.join(directory, name), exist_ok=True)
    count = 0
    for count, (image, label) in enumerate(examples, 1):
        path = os.path.join(directory, class_names[int(label)], f"{count:06d}.jpg")
        Image.fromarray(image).save(path, quality=quality)
    return count
