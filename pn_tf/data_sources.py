"""Where a run's labelled images come from: a TFDS dataset or a folder of images.

Every stage asks a :class:`DataSource` for batches of one logical split, and nothing
else about the data:

* ``"train_main"`` -- training images (baseline training, fine-tuning);
* ``"holdout"``    -- the held-out 10% (search, model selection, equivalence checks);
* ``"train"``      -- both (int8 calibration);
* ``"test"``       -- reported only, never used to choose anything; a folder without
  ``test_dir`` has none, and the report says its accuracies are held-out ones.

Batches are ``(float32 images [B, S, S, 3], int32 labels)`` in the pixel range the model
expects (``input_range``): ``0_255`` (zoo models and models that begin with their own
Rescaling/Normalization layer), ``0_1`` or ``-1_1``.
"""

from __future__ import annotations

INPUT_SCALES = {"0_255": (1.0, 0.0), "0_1": (1.0 / 255.0, 0.0), "-1_1": (1.0 / 127.5, -1.0)}


class DataSourceError(ValueError):
    """The data cannot serve a run (the message says what to fix)."""


class DataSource:
    """Labelled images of one run. Subclasses implement :meth:`_batches`.

    Attributes:
        name: what the report calls the data (a TFDS name or a folder path).
        num_classes, class_names: labels; ``class_names[k]`` names label k.
        image_size: the default square side (a model's own input size wins).
        has_test: whether a ``"test"`` split exists.
        skipped: ``(path, reason)`` of image files that could not be read.
        normalization: ``{"mean", "std"}`` per channel in pixels, for zoo models' input layer.
    """

    name = ""
    num_classes = 0
    class_names = None
    image_size = None
    has_test = True
    skipped = ()
    normalization = None

    def __init__(self, input_range="0_255"):
        if input_range not in INPUT_SCALES:
            raise DataSourceError(f"input_range must be one of {', '.join(INPUT_SCALES)}, got "
                                  f"{input_range!r}")
        self.input_range = input_range

    def batches(self, split, batch_size, training, image_size=None, seed=0, take=None):
        """A batched ``tf.data.Dataset`` of ``split`` (see the module docstring)."""
        if split == "test" and not self.has_test:
            raise DataSourceError(f"{self.name} has no test split")
        ds = self._batches(split, batch_size, training, image_size or self.image_size, seed, take)
        scale, offset = INPUT_SCALES[self.input_range]
        if (scale, offset) != (1.0, 0.0):
            ds = ds.map(lambda x, y: (x * scale + offset, y))
        return ds

    def _batches(self, split, batch_size, training, image_size, seed, take):
        raise NotImplementedError

    def count(self, split):
        """Number of images in ``split``."""
        raise NotImplementedError

    @property
    def eval_split(self):
        """The split whose accuracy the report shows: ``"test"``, else ``"holdout"``."""
        return "test" if self.has_test else "holdout"


class TFDSData(DataSource):
    """A dataset of :data:`pn_tf.data.DATASETS`, read offline from a TFDS data directory."""

    def __init__(self, dataset, data_dir=None, input_range="0_255"):
        from pn_tf import data as data_lib

        super().__init__(input_range)
        try:
            spec = data_lib.get_spec(dataset)
            builder = data_lib._builder(dataset, data_dir)
        except (ValueError, FileNotFoundError) as err:
            raise DataSourceError(str(err)) from err
        self.name, self.data_dir = dataset, data_dir
        self.num_classes, self.image_size = spec.num_classes, spec.image_size
        self.normalization = data_lib.normalization_kwargs(dataset)
        label = builder.info.features["label"]
        self.class_names = list(label.names) if hasattr(label, "names") else None

    def _batches(self, split, batch_size, training, image_size, seed, take):
        from pn_tf import data as data_lib

        return data_lib.make_dataset(self.name, split, batch_size, training, image_size=image_size,
                                     data_dir=self.data_dir, seed=seed, take=take,
                                     drop_remainder=training)

    def count(self, split):
        from pn_tf import data as data_lib

        return data_lib.num_examples(self.name, split, self.data_dir)


class FolderData(DataSource):
    """A folder of class sub-folders (:mod:`pn_tf.image_folder`), plus an optional test folder."""

    def __init__(self, image_dir, test_dir=None, input_range="0_255", image_size=224):
        from pn_tf.image_folder import ImageFolderError, scan

        super().__init__(input_range)
        try:
            self.folder = scan(image_dir)
            self.test = scan(test_dir) if test_dir else None
        except ImageFolderError as err:
            raise DataSourceError(str(err)) from err
        from pn_tf import data as data_lib

        self.name = image_dir
        self.normalization = data_lib.normalization_kwargs("imagenet2012")  # photographs
        self.class_names = list(self.folder.class_names)
        self.num_classes = len(self.class_names)
        self.image_size = image_size
        self.has_test = self.test is not None
        self.skipped = list(self.folder.skipped) + list(self.test.skipped if self.test else [])
        if self.test is not None and self.test.class_names != self.class_names:
            raise DataSourceError(
                f"--test_dir={test_dir} has classes {self.test.class_names}, --image_dir={image_dir} "
                f"has {self.class_names}: both need the same class sub-folders")
        for split in ("train_main", "holdout"):
            if not self.folder.split(split):
                raise DataSourceError(f"--image_dir={image_dir} has no image in its {split} split "
                                      f"({len(self.folder.files)} readable images); add images")

    def _batches(self, split, batch_size, training, image_size, seed, take):
        import tensorflow as tf

        from pn_tf.image_folder import folder_dataset

        folder, split = self._folder(split)
        ds = folder_dataset(folder, split, batch_size, image_size, training, seed=seed, take=take)
        options = tf.data.Options()  # shard batches across workers, as pn_tf.data does
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return ds.with_options(options)

    def _folder(self, split):
        return (self.test, "train") if split == "test" else (self.folder, split)

    def count(self, split):
        folder, split = self._folder(split)
        return len(folder.split(split))


def open_data(dataset="", image_dir="", test_dir="", data_dir=None, input_range="0_255",
              image_size=None):
    """The :class:`DataSource` for a TFDS ``dataset`` or an ``image_dir`` (one of the two)."""
    if image_dir:
        return FolderData(image_dir, test_dir or None, input_range, image_size or 224)
    if test_dir:
        raise DataSourceError("--test_dir goes with --image_dir; a TFDS dataset brings its own test split")
    return TFDSData(dataset, data_dir, input_range)
