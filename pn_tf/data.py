"""Input pipelines: TFDS datasets -> batched ``(images, labels)`` for search, training and eval.

Batches are ``(float32 images [B, S, S, 3] with raw pixel values in [0, 255], int32 labels [B])``.
Normalisation is deliberately *not* done here: every model starts with a
``keras.layers.Normalization`` built from :func:`normalization_stats`, so a saved or TFLite
model takes raw pixels and needs no preprocessing code beside it.

Logical splits (``split=`` of :func:`make_dataset` and :func:`num_examples`):

* ``"train"``      -- the whole TFDS training split.
* ``"train_main"`` -- the training split minus the holdout.
* ``"holdout"``    -- the *last* ``holdout_fraction`` (default 10%) of the training split in TFDS
  record order, e.g. ``train[45000:]`` for CIFAR-10, the 5,000 images PN searches its gates on
  and selects models with (METHOD.md item 9). TFDS writes records in a fixed, hash-shuffled
  order, so this plain slice is deterministic, mixes all classes, and is disjoint from
  ``train_main`` (``train[:45000]``). Counts are absolute (``round(n * fraction)`` examples),
  so any fraction works, not only whole percents.
* ``"test"``       -- the dataset's evaluation split (CIFAR-10 ``test``; ImageNet-style
  ``validation``). It is only reported, never used to choose anything.

Reading is offline: nothing is downloaded unless ``download=True`` is passed. The TFDS data dir
is the explicit ``data_dir`` argument, else ``$TFDS_DATA_DIR``, else the TFDS default
(``~/tensorflow_datasets``).

Augmentation (``training=True``) follows the usual recipes the paper's baselines use:
CIFAR pad-4 random crop + horizontal flip, done on whole batches; ImageNet-style random resized
crop (scale 0.08-1, ratio 3/4-4/3, decoding only the crop window) per image + a batched flip.
Evaluation: CIFAR as is; ImageNet-style resize of the shorter side to ``size / 0.875`` and a
centre crop. Randomness uses stateless ops keyed per element from ``seed``, so a given seed
gives the same batches however many parallel workers tf.data uses.
"""

from __future__ import annotations

import dataclasses
import os
import random

import tensorflow as tf
import tensorflow_datasets as tfds

AUTOTUNE = tf.data.AUTOTUNE
SPLITS = ("train", "train_main", "holdout", "test")
HOLDOUT_FRACTION = 0.1

_CIFAR_PAD = 4
_EVAL_CROP_FRACTION = 0.875


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about one dataset.

    ``mean``/``std`` are per-channel statistics in pixel units (0..255), consumed by the models'
    Normalization layer. ``recipe`` picks the preprocessing: ``"cifar"`` (small fixed-size
    images, cached decoded, augmented per batch) or ``"imagenet"`` (variable-size JPEGs, decoded
    and cropped per image). ``image_size`` is the default output size.
    """

    tfds_name: str
    num_classes: int
    image_size: int
    train_split: str
    eval_split: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    recipe: str
    shuffle_buffer: int
    cache: bool
    manual_download: bool = False


def _pixels(values):
    return tuple(round(255.0 * v, 4) for v in values)


_IMAGENET_MEAN = _pixels((0.485, 0.456, 0.406))
_IMAGENET_STD = _pixels((0.229, 0.224, 0.225))

DATASETS = {
    "cifar10": DatasetSpec(
        "cifar10", num_classes=10, image_size=32, train_split="train", eval_split="test",
        mean=_pixels((0.4914, 0.4822, 0.4465)), std=_pixels((0.2470, 0.2435, 0.2616)),
        recipe="cifar", shuffle_buffer=50_000, cache=True),
    "imagenette": DatasetSpec(
        "imagenette/160px-v2", num_classes=10, image_size=224, train_split="train",
        eval_split="validation", mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
        recipe="imagenet", shuffle_buffer=10_000, cache=False),
    "imagenet2012": DatasetSpec(
        "imagenet2012", num_classes=1000, image_size=224, train_split="train",
        eval_split="validation", mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
        recipe="imagenet", shuffle_buffer=10_000, cache=False, manual_download=True),
}


class DatasetNotFoundError(FileNotFoundError):
    """A known dataset is not prepared in the TFDS data dir that was searched."""


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; a ``ValueError`` listing the known names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"Unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None


def normalization_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, variance)`` per channel in pixel units, for ``keras.layers.Normalization``."""
    spec = get_spec(name)
    return spec.mean, tuple(s * s for s in spec.std)


def normalization_kwargs(name: str) -> dict:
    """``{"mean": [...], "std": [...]}`` of a dataset, for the model builders' input normalization."""
    mean, variance = normalization_stats(name)
    return {"mean": list(mean), "std": [v ** 0.5 for v in variance]}


def resolve_data_dir(data_dir=None) -> str:
    """Explicit argument > ``$TFDS_DATA_DIR`` > the TFDS default data dir."""
    if data_dir:
        return os.fspath(data_dir)
    return os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.get_default_data_dir()


def _missing_message(name: str, spec: DatasetSpec, data_dir: str) -> str:
    head = (f"Dataset {name!r} (TFDS {spec.tfds_name!r}) is not prepared in the TFDS data dir "
            f"{data_dir!r}.")
    if spec.manual_download:
        manual = os.path.join(data_dir, "downloads", "manual")
        return (f"{head} ImageNet needs a manual download: put ILSVRC2012_img_train.tar and "
                f"ILSVRC2012_img_val.tar into {manual} and build it with "
                f"`tfds build {spec.tfds_name} --data_dir={data_dir}` (or call with "
                "download=True, which builds from those files); or set TFDS_DATA_DIR / "
                "--data_dir to a data dir where it is already prepared.")
    return (f"{head} Set TFDS_DATA_DIR or --data_dir to a directory holding "
            f"{spec.tfds_name}/, or pass download=True (needs internet access).")


def _builder(name: str, data_dir=None, download: bool = False):
    spec = get_spec(name)
    data_dir = resolve_data_dir(data_dir)
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise DatasetNotFoundError(_missing_message(name, spec, data_dir))
        builder.download_and_prepare()
    return builder


def _resolve(name, split, data_dir, holdout_fraction, download=False):
    """(spec, builder, TFDS split string) for a logical split."""
    spec = get_spec(name)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    builder = _builder(name, data_dir, download)
    if split == "train":
        return spec, builder, spec.train_split
    if split == "test":
        return spec, builder, spec.eval_split
    n = builder.info.splits[spec.train_split].num_examples
    cut = n - round(n * holdout_fraction)
    where = f"[:{cut}]" if split == "train_main" else f"[{cut}:]"
    return spec, builder, spec.train_split + where


def tfds_split(name: str, split: str, data_dir=None,
               holdout_fraction: float = HOLDOUT_FRACTION) -> str:
    """The TFDS split string behind a logical split, e.g. ``"train[45000:]"`` (CIFAR holdout)."""
    return _resolve(name, split, data_dir, holdout_fraction)[2]


def num_examples(name: str, split: str, data_dir=None,
                 holdout_fraction: float = HOLDOUT_FRACTION) -> int:
    """Number of examples in a logical split (for steps per epoch and progress bars)."""
    _, builder, where = _resolve(name, split, data_dir, holdout_fraction)
    return builder.info.splits[where].num_examples


# --- augmentation ---------------------------------------------------------------------------

def _keyed(ds, seed: int, stream: int):
    """Pair every element with a stateless-RNG key, distinct per (seed, stream, element, epoch).

    Keys come from a seeded ``Dataset.random`` that re-randomises on every pass, so a pipeline
    iterated once per epoch (no ``repeat``) still draws fresh crops each epoch.
    """
    draws = tf.data.Dataset.random(seed=seed + stream, rerandomize_each_iteration=True)
    base = tf.constant([seed, stream], tf.int64)
    return tf.data.Dataset.zip(ds, draws.map(
        lambda r: tf.random.experimental.stateless_fold_in(base, r)))


def _random_flip(images, key):
    """Mirror each image of a batch left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], key) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def _cifar_augment(images, key):
    """Zero-pad a batch by 4 px and cut one random window of the input size out of each image.

    A gather with per-image row/column indices crops the whole batch in two ops instead of a
    per-image map; the flip follows on the batch.
    """
    height, width = images.shape[1], images.shape[2]
    p = _CIFAR_PAD
    padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    offsets = tf.random.stateless_uniform(
        [tf.shape(images)[0], 2], crop_key, minval=0, maxval=2 * p + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)
    cols = offsets[:, 1:] + tf.range(width)
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    images = tf.gather(images, cols, axis=2, batch_dims=1)
    return _random_flip(images, flip_key)


def _random_resized_crop(encoded, key, size: int):
    """Inception-style crop (area 8%-100%, aspect 3/4-4/3), decoding only the chosen window."""
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(encoded),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=key,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    return tf.image.resize(image, [size, size], antialias=True)


def _center_crop(encoded, size: int):
    """Resize the shorter side to ``size / 0.875``, then cut the central ``size`` square."""
    image = tf.io.decode_jpeg(encoded, channels=3)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / _EVAL_CROP_FRACTION) / tf.reduce_min(hw)
    image = tf.image.resize(image, tf.cast(tf.round(hw * scale), tf.int32), antialias=True)
    return tf.image.resize_with_crop_or_pad(image, size, size)


def _pixels_out(images, labels, size: int):
    """Final float32 [0, 255] images of the requested size and int32 labels."""
    images = tf.cast(images, tf.float32)
    if images.shape[1] != size or images.shape[2] != size:
        images = tf.image.resize(images, [size, size])
    return tf.clip_by_value(images, 0.0, 255.0), tf.cast(labels, tf.int32)


# --- pipeline -------------------------------------------------------------------------------

def model_image_size(model) -> int | None:
    """The square input side ``model`` was built for, or None when it has no fixed one.

    Data made for a model must match it (e.g. imagenette at ``--input_size=128`` instead of
    the dataset's default 224), so the training and evaluation helpers take the side from here.
    """
    try:
        shape = tuple(model.inputs[0].shape)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    if len(shape) == 4 and shape[1] and shape[1] == shape[2]:
        return int(shape[1])
    return None


def with_cardinality(ds: tf.data.Dataset) -> tuple[tf.data.Dataset, int]:
    """``(ds, batches per pass)``, counting one pass when tf.data cannot tell the length.

    An image folder's dataset skips files that fail to decode (``ignore_errors``), so its
    length is unknown until read; a file fails on every pass alike, so one counted pass
    gives the length of every later one, which training schedules and progress bars need.
    """
    steps = int(ds.cardinality())
    if steps < 0:
        steps = int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
        ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds, steps


def make_dataset(name: str, split: str, batch_size: int, training: bool, *,
                 image_size: int | None = None, data_dir=None, seed: int | None = None,
                 drop_remainder: bool | None = None, repeat: bool = False,
                 take: int | None = None, cache: bool | None = None,
                 holdout_fraction: float = HOLDOUT_FRACTION,
                 download: bool = False) -> tf.data.Dataset:
    """A batched, prefetched ``tf.data.Dataset`` of ``(float32 images in [0, 255], int32 labels)``.

    Args:
        name: a key of ``DATASETS``.
        split: one of ``SPLITS`` (see the module docstring).
        batch_size: images per batch.
        training: shuffle and augment (otherwise a fixed order and deterministic preprocessing).
        image_size: output side length; the dataset's default (32 / 224) when None.
        data_dir: TFDS data dir; falls back to ``$TFDS_DATA_DIR``, then the TFDS default.
        seed: seeds file order, shuffling and augmentation; a random one when None.
        drop_remainder: drop a last partial batch; defaults to ``training``.
        repeat: repeat forever (reshuffled and re-augmented each epoch).
        take: keep only the first ``take`` examples of the split (before shuffling), for quick
            tests and smoke runs.
        cache: keep decoded examples in memory; the dataset's default (CIFAR yes) when None.
        holdout_fraction: share of the training split held out for ``"holdout"``.
        download: allow TFDS to download/build a missing dataset; never done otherwise.
    """
    spec, builder, where = _resolve(name, split, data_dir, holdout_fraction, download)
    size = image_size or spec.image_size
    drop_remainder = training if drop_remainder is None else drop_remainder
    cache = spec.cache if cache is None else cache
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    cifar = spec.recipe == "cifar"

    ds = builder.as_dataset(
        split=where, as_supervised=True, shuffle_files=training,
        read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
        # JPEGs stay encoded so a training crop decodes only its window.
        decoders=None if cifar else {"image": tfds.decode.SkipDecoding()})
    if take is not None:
        ds = ds.take(take)
    if cache:
        ds = ds.cache()
    if training:
        buffer = spec.shuffle_buffer if take is None else min(take, spec.shuffle_buffer)
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    if cifar:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
        if training:
            ds = _keyed(ds, seed, 0).map(
                lambda xy, key: (_cifar_augment(xy[0], key), xy[1]),
                num_parallel_calls=AUTOTUNE)
    else:
        if training:
            ds = _keyed(ds, seed, 1).map(
                lambda xy, key: (_random_resized_crop(xy[0], key, size), xy[1]),
                num_parallel_calls=AUTOTUNE)
        else:
            ds = ds.map(lambda x, y: (_center_crop(x, size), y), num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
        if training:
            ds = _keyed(ds, seed, 2).map(
                lambda xy, key: (_random_flip(xy[0], key), xy[1]),
                num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda x, y: _pixels_out(x, y, size), num_parallel_calls=AUTOTUNE)
    # One TFRecord file cannot be sharded by file across workers: shard the (deterministic)
    # batches instead, so MultiWorkerMirroredStrategy splits every global batch.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(AUTOTUNE)
