"""An image folder as a dataset: classes, a per-file held-out split, unreadable files skipped."""

import os

import numpy as np
import pytest

from pn_tf.image_folder import ImageFolderError, folder_dataset, scan, split_of
from tests.conftest import REPO_ROOT


def _write(path, size=(20, 28), seed=0, fmt="PNG"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 255, size + (3,)).astype("uint8")
    Image.fromarray(pixels).save(path, format=fmt)


def _folder(tmp_path, per_class=12):
    for c, name in enumerate(("cats", "dogs", "owls")):
        for i in range(per_class):
            _write(tmp_path / "images" / name / f"{i}.{'png' if i % 2 else 'jpg'}", seed=10 * c + i,
                   fmt="PNG" if i % 2 else "JPEG")
    return tmp_path / "images"


def test_classes_files_and_unreadable_ones(tmp_path):
    root = _folder(tmp_path)
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "dogs" / "notes.txt").write_text("not an image, not counted")
    folder = scan(root)
    assert folder.class_names == ["cats", "dogs", "owls"]
    assert len(folder.files) == 36 and [label for _, label in folder.files].count(1) == 12
    assert [os.path.basename(p) for p, _ in folder.skipped] == ["broken.jpg"]


def test_held_out_split_is_decided_per_file(tmp_path):
    root = _folder(tmp_path, per_class=40)
    before = scan(root)
    holdout = {p for p, _ in before.split("holdout")}
    assert 0 < len(holdout) < 0.25 * len(before.files)  # about 10%
    assert holdout.isdisjoint(p for p, _ in before.split("train_main"))
    for i in range(40, 80):  # more files: none of the old ones changes side
        _write(root / "owls" / f"{i}.png", seed=1000 + i)
    after = scan(root)
    assert {p for p, _ in after.split("holdout") if p in {q for q, _ in before.files}} == holdout
    assert split_of("cats/1.png") == split_of(os.path.join("cats", "1.png"))


def test_dataset_batches_and_skips(tmp_path):
    root = _folder(tmp_path)
    (root / "owls" / "broken.png").write_bytes(b"\x89PNG truncated")
    folder = scan(root)
    images, labels = next(iter(folder_dataset(folder, "train", 8, 16, training=True, seed=1)))
    assert images.shape == (8, 16, 16, 3) and images.dtype.name == "float32"
    assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 255.0
    evaluation = folder_dataset(folder, "train", 64, 16, training=False)
    assert sum(int(y.shape[0]) for _, y in evaluation) == 36
    assert len(folder.skipped) == 1


@pytest.mark.parametrize("layout,message", [
    ({"only": 3}, "at least two class sub-folders"),
    ({}, "at least two class sub-folders"),
    ({"a": 0, "b": 0}, "no readable image"),
])
def test_folders_that_cannot_be_datasets(tmp_path, layout, message):
    root = tmp_path / "images"
    root.mkdir()
    for name, count in layout.items():
        (root / name).mkdir()
        for i in range(count):
            _write(root / name / f"{i}.png", seed=i)
    with pytest.raises(ImageFolderError, match=message):
        scan(root)
    with pytest.raises(ImageFolderError, match="does not exist"):
        scan(tmp_path / "absent")


def test_no_readable_image(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ImageFolderError, match="no readable image"):
        scan(tmp_path)


def test_make_image_folder_tool(tmp_path, data_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_image_folder", REPO_ROOT / "tools" / "make_image_folder.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "cifar"
    assert tool.main(["--dataset=cifar10", "--split=test", f"--out={out}", "--take=30",
                      f"--data_dir={data_dir}"]) == 0
    folder = scan(out)
    assert len(folder.class_names) == 10 and len(folder.files) == 30 and not folder.skipped
    assert tool.main(["--dataset=nosuchset", f"--out={out}", f"--data_dir={data_dir}"]) == 2


def test_model_files_are_checked_with_a_clear_message(tmp_path):
    import keras

    from pn_tf.model_file import ModelFileError, load_model

    cases = {"absent.keras": None, "corrupt.keras": b"not a zip", "corrupt.h5": b"not hdf5",
             "model.txt": b"text"}
    messages = {"absent.keras": "does not exist", "corrupt.keras": "not a valid .keras file",
                "corrupt.h5": "not a valid HDF5 file", "model.txt": "neither a .keras nor a .h5"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=messages[name]):
            load_model(tmp_path / name)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    model.save(tmp_path / "good.keras")
    assert load_model(tmp_path / "good.keras").output_shape == (None, 6, 6, 2)
