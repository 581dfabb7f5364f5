"""Tests for pn_tf.data: shapes, splits, augmentation and the offline-error messages.

Reads the real offline TFDS data (``data_dir`` fixture) but only small slices (``take=``).
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from pn_tf import data


def _first(ds):
    images, labels = next(iter(ds))
    return images.numpy(), labels.numpy()


def _check_batch(images, labels, shape, num_classes=10):
    assert images.shape == shape and images.dtype == np.float32
    assert labels.shape == shape[:1] and labels.dtype == np.int32
    assert images.min() >= 0.0 and images.max() <= 255.0
    assert images.max() > 1.0, "images must be raw pixels, not normalised"
    assert labels.min() >= 0 and labels.max() < num_classes


def _ids(data_dir, split):
    ds = tfds.load("cifar10", split=split, data_dir=data_dir, download=False,
                   decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: (ex["id"], ex["label"])).batch(10_000)
    ids, labels = zip(*((i, y) for i, y in ds.as_numpy_iterator()))
    return np.concatenate(ids), np.concatenate(labels)


@pytest.mark.parametrize("split,training", [("train", True), ("test", False)])
def test_cifar_batch(data_dir, split, training):
    ds = data.make_dataset("cifar10", split, 32, training, data_dir=data_dir, take=64, seed=0)
    _check_batch(*_first(ds), (32, 32, 32, 3))
    assert len(list(ds)) == 2


def test_cifar_resize_and_partial_batch(data_dir):
    ds = data.make_dataset("cifar10", "test", 16, False, data_dir=data_dir, take=20,
                           image_size=40)
    shapes = [x.shape for x, _ in ds]
    assert shapes == [(16, 40, 40, 3), (4, 40, 40, 3)]


def test_split_sizes(data_dir):
    sizes = {s: data.num_examples("cifar10", s, data_dir) for s in data.SPLITS}
    assert sizes == {"train": 50_000, "train_main": 45_000, "holdout": 5_000, "test": 10_000}
    assert data.num_examples("cifar10", "holdout", data_dir, holdout_fraction=0.2) == 10_000
    assert data.num_examples("imagenette", "test", data_dir) == 3_925
    assert (data.num_examples("imagenette", "train_main", data_dir)
            + data.num_examples("imagenette", "holdout", data_dir)) == 9_469


def test_holdout_disjoint_deterministic_and_class_mixed(data_dir):
    holdout = data.tfds_split("cifar10", "holdout", data_dir)
    assert holdout == data.tfds_split("cifar10", "holdout", data_dir) == "train[45000:]"
    hold_ids, hold_labels = _ids(data_dir, holdout)
    main_ids, _ = _ids(data_dir, data.tfds_split("cifar10", "train_main", data_dir))
    assert len(set(hold_ids)) == 5_000 and len(set(main_ids)) == 45_000
    assert not set(hold_ids) & set(main_ids)
    np.testing.assert_array_equal(hold_ids, _ids(data_dir, holdout)[0])
    counts = collections.Counter(hold_labels.tolist())
    assert len(counts) == 10 and min(counts.values()) > 400

    # make_dataset's holdout is exactly that slice.
    images, labels = _first(data.make_dataset("cifar10", "holdout", 8, False,
                                              data_dir=data_dir, take=8))
    ref = tfds.load("cifar10", split=holdout, data_dir=data_dir, as_supervised=True)
    ref_images, ref_labels = next(iter(ref.batch(8)))
    np.testing.assert_array_equal(images, ref_images.numpy().astype(np.float32))
    np.testing.assert_array_equal(labels, ref_labels.numpy())


def _window(padded, dy, dx, flip):
    window = padded[dy:dy + 32, dx:dx + 32]
    return window[:, ::-1] if flip else window


def test_cifar_augment_is_padded_crop_or_flip():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    out = data._cifar_augment(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    windows = set()
    for b in range(len(images)):
        found = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (0, 1)
                 if np.array_equal(out[b], _window(padded[b], dy, dx, flip))]
        assert found, f"image {b} is not a padded crop of its input"
        windows.add(found[0])
    assert len(windows) > 4, "offsets/flips should vary across the batch"


def test_training_augments_eval_deterministic(data_dir):
    def batch(training, seed=0):
        ds = data.make_dataset("cifar10", "train", 64, training, data_dir=data_dir, take=64,
                               seed=seed)
        return _first(ds)

    plain, plain_labels = batch(False)
    np.testing.assert_array_equal(plain, batch(False)[0])
    aug, aug_labels = batch(True)
    assert aug.shape == plain.shape
    assert sorted(aug_labels) == sorted(plain_labels)  # same 64 examples, shuffled
    unchanged = sum(any(np.array_equal(a, p) for p in plain) for a in aug)
    assert unchanged < 8
    np.testing.assert_array_equal(aug, batch(True)[0])  # same seed, same batch
    assert not np.array_equal(aug, batch(True, seed=1)[0])


def test_each_pass_draws_new_augmentation(data_dir):
    ds = data.make_dataset("cifar10", "holdout", 32, True, data_dir=data_dir, take=32, seed=0)
    first, second = _first(ds)[0], _first(ds)[0]
    assert not np.array_equal(first, second)


def test_resumed_training_draws_new_batches(tmp_path, data_dir):
    """A run resumed after n epochs must not replay its first epoch's batches (same seed)."""
    from pn_tf.io import write_json
    from pn_tf.training import backup_dir, resume_seed

    def first_batch(seed):
        return _first(data.make_dataset("cifar10", "holdout", 32, True, data_dir=data_dir,
                                        take=256, seed=seed))[0]

    workdir = str(tmp_path)
    assert resume_seed(workdir, 7) == 7  # a fresh run keeps its seed
    metadata = tmp_path / "backup" / "training_metadata.json"
    assert str(metadata.parent) == backup_dir(workdir)
    seeds = []
    for finished in (3, 4):
        write_json(str(metadata), {"epoch": finished, "batch": 0})
        seeds.append(resume_seed(workdir, 7))
    assert len({7, *seeds}) == 3 and resume_seed(workdir, None) is None
    assert not np.array_equal(first_batch(7), first_batch(seeds[0]))


def test_imagenette_batches(data_dir):
    if not tfds.builder("imagenette/160px-v2", data_dir=data_dir).is_prepared():
        pytest.skip("imagenette not prepared")
    train = data.make_dataset("imagenette", "train", 8, True, image_size=64,
                              data_dir=data_dir, take=16, seed=0)
    _check_batch(*_first(train), (8, 64, 64, 3))
    assert len(list(train)) == 2
    evaluate = lambda: _first(data.make_dataset(  # noqa: E731
        "imagenette", "test", 8, False, image_size=64, data_dir=data_dir, take=8))
    images, labels = evaluate()
    _check_batch(images, labels, (8, 64, 64, 3))
    np.testing.assert_array_equal(images, evaluate()[0])


def test_normalization_stats():
    mean, variance = data.normalization_stats("cifar10")
    assert len(mean) == len(variance) == 3
    assert 100 < mean[0] < 130 and 3000 < variance[0] < 5000  # pixel units
    np.testing.assert_allclose(np.sqrt(data.normalization_stats("imagenette")[1]),
                               data.DATASETS["imagenette"].std)


def test_missing_dataset_names_data_dir(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.make_dataset("cifar10", "train", 8, True, data_dir=tmp_path)
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    assert str(tmp_path) in message and "cifar10" in message and "TFDS_DATA_DIR" in message
    with pytest.raises(data.DatasetNotFoundError):
        data.num_examples("imagenette", "test", tmp_path)


def test_data_dir_resolution(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert data.resolve_data_dir() == str(tmp_path)
    with pytest.raises(data.DatasetNotFoundError, match=str(tmp_path)):
        data.num_examples("cifar10", "test")
    assert data.num_examples("cifar10", "test", data_dir) == 10_000  # argument beats env


def test_imagenet2012_missing_explains_manual_download(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.num_examples("imagenet2012", "train", tmp_path)
    message = str(err.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert str(tmp_path / "downloads" / "manual") in message


def test_unknown_names():
    with pytest.raises(ValueError, match="cifar10.*imagenet2012.*imagenette"):
        data.get_spec("mnist")
    with pytest.raises(ValueError, match="holdout"):
        data.tfds_split("cifar10", "validation")


def test_model_image_size_reads_a_square_fixed_input():
    import keras

    def model(shape):
        inputs = keras.Input(shape)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))

    assert data.model_image_size(model((64, 64, 3))) == 64
    assert data.model_image_size(model((None, None, 3))) is None
    assert data.model_image_size(model((64, 48, 3))) is None
    assert data.model_image_size(object()) is None
