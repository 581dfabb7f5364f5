"""A folder of images as a dataset: one sub-folder per class, the files users have in it.

:func:`scan` reads the folder once: the classes (sorted sub-folder names), every image
file (sub-folders of a class folder included, symbolic links followed), and every other
file with its reason for being skipped, so that a run never fails hours in on a broken
file and no file is left out unsaid. Hidden files and folders (names starting with ``.``:
``.DS_Store``, macOS ``._*`` files, ``.ipynb_checkpoints``) and the operating systems'
own ``__MACOSX``, ``Thumbs.db`` and ``desktop.ini`` are not the user's data and are left
out silently. :func:`split_of` puts each file in the held-out split or the training split
by a hash of its path relative to the folder: the decision is per file, so adding or
removing other files never moves a file between the splits. :func:`folder_dataset`
yields batches of ``(float32 pixels 0..255, int32 labels)``, as
:func:`pn_tf.data.make_dataset` does for TFDS datasets.

Decoding is TensorFlow's (``tf.io.decode_image`` in ``tf.data``), which reads JPEG
(CMYK included), PNG (grey, palette, alpha, 16-bit), GIF (first frame), BMP and WebP
into RGB. The scan checks with Pillow what TensorFlow would get wrong or fail on: the
EXIF orientation of phone photos (applied in the pipeline, so that images are seen
upright, as a user sees them), files with a supported name but another format, palette
BMPs, empty and truncated files. docs/usage.md has the table of cases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

log = logging.getLogger(__name__)

# The names (in any case: .JPG, .Png) of the formats tf.io.decode_image reads, and those
# formats as Pillow names them (MPO: the multi-picture JPEG some cameras write).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
DECODED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")
# Not the user's data: left out without a word (names starting with "." are too).
SYSTEM_NAMES = ("__macosx", "thumbs.db", "desktop.ini")
HOLDOUT_FRACTION = 0.1
# How each file format ends when it is complete; a file that does not end so is decoded
# once by TensorFlow during the scan (BMP and WebP always are: they have no end marker).
_COMPLETE_ENDINGS = {"JPEG": (b"\xff\xd9",), "MPO": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",),
                     "GIF": (b";",)}
_TAIL = 1 << 16  # bytes read from a file's end to find its end marker


class ImageFolderError(ValueError):
    """The folder cannot serve as a dataset (the message says what to fix)."""


@dataclasses.dataclass
class ImageFolder:
    """What :func:`scan` found.

    Attributes:
        root: the folder.
        class_names: sorted sub-folder names; label k is ``class_names[k]``.
        files: ``(path, label)`` of every readable image, in sorted order.
        skipped: ``(path, reason)`` of the files in the class folders that are not read.
        orientation: ``{path: EXIF orientation 2..8}`` of the files stored rotated or
            mirrored (phone photos); the pipeline turns them upright.
    """

    root: str
    class_names: list
    files: list
    skipped: list
    orientation: dict = dataclasses.field(default_factory=dict)

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


def _ignored(name):
    """Whether a file or folder name is hidden or the operating system's, not the user's data."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def _listing(folder):
    """Every file under ``folder`` (sorted), following links, each folder read once."""
    files, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link to a folder already read, or a loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))  # the first path, in sorted order, wins
        files.extend(os.path.join(dirpath, f) for f in filenames if not _ignored(f))
    return sorted(files)


def _orientation(image):
    """The EXIF orientation (1..8) of an open Pillow image; 1 (as stored) when it has none.

    Reads the EXIF block the header holds (JPEG, WebP; a PNG's eXIf chunk before its
    pixels) without decoding the pixels.
    """
    from PIL import Image

    raw = image.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = int(exif.get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the pixels are good, taken as stored
        return 1
    return value if 1 <= value <= 8 else 1


def _tensorflow_fails(path):
    """Why TensorFlow cannot decode ``path``, or "" if it can (a full decode)."""
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as err:
        message = getattr(err, "message", str(err)).strip().splitlines()[-1]
        return f"TensorFlow cannot decode it ({message})"
    return ""


def _complete(f, size, fmt):
    """Whether the open file ``f`` visibly ends as a whole file of format ``fmt`` does."""
    endings = _COMPLETE_ENDINGS.get(fmt)
    if not endings:
        return False
    f.seek(max(0, size - 16))
    if f.read().endswith(endings):  # the common case: a few bytes read
        return True
    f.seek(max(0, size - _TAIL))
    tail = f.read()
    # Phones write metadata after a JPEG's end marker. The marker cannot occur inside the
    # compressed pixels, only in the header (an EXIF thumbnail, within the first 64 KiB):
    # found in a tail that starts past the header, it ends the image.
    return fmt in ("JPEG", "MPO") and size - _TAIL > _TAIL and b"\xff\xd9" in tail


def _inspect(path, check=True):
    """``(reason, orientation)``: why ``path`` is not read ("" if it is), and its EXIF orientation."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in IMAGE_EXTENSIONS:
        return (f"not a supported image type ({extension or 'no extension'}; pn-tf reads "
                f"{' '.join(IMAGE_EXTENSIONS)})"), 1
    if not check:
        return "", 1
    from PIL import Image

    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after Pillow and the end check
        size = os.fstat(f.fileno()).st_size
    except OSError as err:
        return ("broken symbolic link" if os.path.islink(path) else
                f"cannot be read ({type(err).__name__}: {err})"), 1
    with f:
        if size == 0:
            return "empty file (0 bytes)", 1
        try:
            with Image.open(f) as image:
                fmt, mode, orientation = image.format, image.mode, _orientation(image)
                if fmt not in DECODED_FORMATS:
                    return f"a {fmt} image named {extension}: TensorFlow cannot decode {fmt}", 1
                if fmt == "BMP" and mode == "P":
                    return "a palette BMP: TensorFlow reads its colour indices as grey levels", 1
                image.verify()
        except Exception as err:  # noqa: BLE001 - Pillow raises many types on a non-image; none may stop a run
            return f"not an image or damaged ({type(err).__name__}: {err})", 1
        complete = _complete(f, size, fmt)
    if not complete:
        reason = _tensorflow_fails(path)
        if reason:
            return reason, 1
    return "", orientation


def scan(directory, check=True):
    """Reads ``directory``'s classes and images; see :class:`ImageFolder`.

    Args:
        directory: the folder, with one sub-folder per class.
        check: open every image file's header (and decode the files that look
            incomplete) and skip the unreadable ones, with a warning; without it only the
            layout and the file names are checked.

    Raises:
        ImageFolderError: the folder does not exist, has fewer than two classes with
            images, or no readable image.
    """
    if not os.path.isdir(directory):
        raise ImageFolderError(f"image folder {directory!r} does not exist")
    root = os.path.abspath(directory)
    # Every sub-folder is a class, in sorted order, as keras.utils.image_dataset_from_directory
    # numbers them: a model trained on that labelling keeps its label order here (hidden and
    # system folders, which Keras would count, are no class).
    class_names = sorted(d for d in os.listdir(root)
                         if os.path.isdir(os.path.join(root, d)) and not _ignored(d))
    if len(class_names) < 2:
        raise ImageFolderError(
            f"image folder {directory!r} needs at least two class sub-folders (found "
            f"{len(class_names)}: {class_names or 'none'}); put each class's images in its own "
            "sub-folder")
    files, skipped, orientation, empty = [], [], {}, []
    for label, name in enumerate(class_names):
        count = len(files)
        for path in _listing(os.path.join(root, name)):
            reason, turn = _inspect(path, check)
            if reason:
                skipped.append((path, reason))
                continue
            files.append((path, label))
            if turn != 1:
                orientation[path] = turn
        if len(files) == count:
            empty.append(name)
    if empty:
        log.warning("image folder %s: class sub-folder(s) %s hold no readable image", directory, empty)
    if skipped:
        log.warning("skipping %d file(s) in %s that pn-tf cannot read, e.g. %s (%s)", len(skipped),
                    directory, skipped[0][0], skipped[0][1])
    if not files:
        raise ImageFolderError(f"image folder {directory!r} holds no readable image "
                               f"({len(skipped)} unreadable file(s))")
    return ImageFolder(root, class_names, files, skipped, orientation)


def _upright(image, orientation):
    """``image`` as it is displayed, given its EXIF orientation (a scalar int32 1..8)."""
    import tensorflow as tf

    transforms = [
        lambda: image,                                          # 1: as stored
        lambda: tf.image.flip_left_right(image),                # 2: mirrored
        lambda: tf.image.rot90(image, 2),                       # 3: upside down
        lambda: tf.image.flip_up_down(image),                   # 4: mirrored upside down
        lambda: tf.image.transpose(image),                      # 5: mirrored, turned
        lambda: tf.image.rot90(image, 3),                       # 6: turned 90 degrees clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), 2),   # 7: mirrored, turned back
        lambda: tf.image.rot90(image, 1),                       # 8: turned counter-clockwise
    ]
    return tf.switch_case(tf.clip_by_value(orientation, 1, 8) - 1, transforms)


def _decode(path, size, training, key=None, orientation=None):
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False, dtype=tf.uint8)
    image = tf.cast(image, tf.float32)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    # Shorter side to size / 0.875, then a centre (evaluation) or random (training) square.
    scale = (size / 0.875) / tf.reduce_min(hw)
    image = tf.image.resize(image, tf.cast(tf.round(hw * scale), tf.int32), antialias=True)
    if training:
        image = tf.image.stateless_random_crop(image, [size, size, 3], seed=key)
    else:
        image = tf.image.resize_with_crop_or_pad(image, size, size)
    if orientation is not None:
        # Turned upright on the small square (the square a turn before resizing and cropping
        # would give, to a pixel, at a fraction of the cost), and before the flip, which
        # must mirror what the user sees, never turn it upside down.
        image = _upright(image, orientation)
    if training:
        image = tf.image.stateless_random_flip_left_right(image, seed=key + 1)
    return tf.clip_by_value(image, 0.0, 255.0)


def folder_dataset(folder, split, batch_size, image_size, training, seed=0, take=None,
                   holdout_fraction=HOLDOUT_FRACTION):
    """Batched ``(float32 images [B, S, S, 3] in 0..255, int32 labels)`` of one split.

    Training shuffles and augments (random square crop of the image resized to S / 0.875
    on its shorter side, horizontal flip); evaluation takes the centre square. Files stored
    rotated (EXIF orientation) are turned upright (the square, before the flip); a split
    without any keeps the plain decode. A file that fails to decode even so (damaged inside, or changed after the scan)
    is dropped with a logged warning (``ignore_errors``), never a crash mid-run.
    """
    import tensorflow as tf

    if not isinstance(folder, ImageFolder):
        folder = scan(folder)
    items = folder.split(split, holdout_fraction)
    if take is not None:
        items = items[:take]
    if not items:
        raise ImageFolderError(f"split {split!r} of {folder.root!r} is empty; add images")
    columns = (tf.constant([p for p, _ in items]), tf.constant([label for _, label in items], tf.int32))
    turns = [folder.orientation.get(p, 1) for p, _ in items]
    if any(turn != 1 for turn in turns):
        columns += (tf.constant(turns, tf.int32),)

    def read(item, key=None):  # item: (path, label[, orientation])
        return _decode(item[0], image_size, training, key, item[2] if len(item) > 2 else None), item[1]

    ds = tf.data.Dataset.from_tensor_slices(columns)
    if training:
        ds = ds.shuffle(len(items), seed=seed, reshuffle_each_iteration=True)
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, draws).map(
            lambda item, r: read(item, tf.stack([tf.cast(r, tf.int32), seed])),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda *item: read(item), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors(log_warning=True)
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
