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
    (root / "dogs" / "notes.txt").write_text("not an image: skipped, with its reason")
    folder = scan(root)
    assert folder.class_names == ["cats", "dogs", "owls"]
    assert len(folder.files) == 36 and [label for _, label in folder.files].count(1) == 12
    assert [os.path.basename(p) for p, _ in folder.skipped] == ["broken.jpg", "notes.txt"]


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
    images, _ = next(iter(folder_dataset(folder, "train", 8, 16, training=True, seed=1)))
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


# Folders as users have them: one image of each kind, read through the real reader.
QUADRANTS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40))  # TL, TR, BL, BR


def _quadrants(size=32):
    from PIL import Image

    pixels = np.zeros((size, size, 3), "uint8")
    half = size // 2
    for k, colour in enumerate(QUADRANTS):
        pixels[(k // 2) * half:(k // 2 + 1) * half, (k % 2) * half:(k % 2 + 1) * half] = colour
    return Image.fromarray(pixels)


def _grey(rgb):
    return round(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _corners(image):
    """The colours at the centres of the four quadrants of a [S, S, 3] image (TL, TR, BL, BR)."""
    s = image.shape[0]
    return [image[r, c] for r in (s // 4, 3 * s // 4) for c in (s // 4, 3 * s // 4)]


def _users_folder(root):
    """Writes every kind of file the reader decides about; returns {name: expected corners}."""
    import tensorflow as tf
    from PIL import Image, ImageOps

    kinds = root / "kinds"
    kinds.mkdir(parents=True)
    image = _quadrants()
    grey = [(_grey(c),) * 3 for c in QUADRANTS]
    expected = {}

    def save(name, im, want, **kw):
        im.save(kinds / name, **kw)
        expected[name] = want

    save("rgb.png", image, QUADRANTS)
    save("upper.JPG", image, QUADRANTS, format="JPEG", quality=95)
    save("upper.PNG", image, QUADRANTS, format="PNG")
    save("upper.JPEG", image, QUADRANTS, format="JPEG", quality=95)
    save("long.jpeg", image, QUADRANTS, quality=95)
    save("lossless.webp", image, QUADRANTS, lossless=True)
    save("plain.bmp", image, QUADRANTS)
    save("anim.gif", image, QUADRANTS, save_all=True, append_images=[image.rotate(90)])
    save("grey.png", image.convert("L"), grey)
    save("grey.jpg", image.convert("L"), grey, quality=95)
    rgba = np.array(image.convert("RGBA"))
    rgba[:16, :16, 3] = 0  # a transparent quadrant: its colour is kept, alpha dropped
    save("alpha.png", Image.fromarray(rgba), QUADRANTS)
    save("grey_alpha.png", image.convert("LA"), grey)
    palette = image.quantize(8)
    save("palette.png", palette, [tuple(c) for c in _corners(np.array(palette.convert("RGB")))])
    save("palette_tRNS.png", palette, expected["palette.png"], transparency=0)
    save("cmyk.jpg", image.convert("CMYK"), QUADRANTS, quality=95)
    grey16 = np.array(image.convert("L")).astype("uint16") * 257
    save("grey16.png", Image.fromarray(grey16), grey)  # mode I;16: Pillow's convert("RGB") would clip to white
    (kinds / "rgb16.png").write_bytes(tf.io.encode_png(np.array(image).astype("uint16") * 257).numpy())
    expected["rgb16.png"] = QUADRANTS  # Pillow cannot write 16-bit RGB; TensorFlow's encoder can
    for o in range(1, 9):  # phone photos: stored as the sensor saw them, EXIF says how to turn them
        exif = Image.Exif()
        exif[0x0112] = o
        path = kinds / f"exif{o}.jpg"
        image.save(path, quality=95, exif=exif.tobytes())
        with Image.open(path) as shown:
            expected[path.name] = [tuple(c) for c in _corners(np.array(ImageOps.exif_transpose(shown)))]
    exif = Image.Exif()
    exif[0x0112] = 6  # a portrait photo: a landscape image, to be turned a quarter clockwise
    wide = Image.fromarray(np.repeat(np.array(image), 2, axis=1)[:, 8:56])  # 48 wide, 32 high
    wide.save(kinds / "portrait.jpg", quality=95, exif=exif.tobytes())
    with Image.open(kinds / "portrait.jpg") as shown:
        upright = np.array(ImageOps.exif_transpose(shown))  # 32 wide, 48 high
    expected["portrait.jpg"] = [tuple(c) for c in _corners(upright[8:40])]  # its centre square
    data = (kinds / "rgb.png").read_bytes()
    jpeg = (kinds / "upper.JPG").read_bytes()
    (kinds / "samsung.jpg").write_bytes(jpeg + b"\0" * 64 + b"SEFT trailer")  # data after the end marker
    expected["samsung.jpg"] = QUADRANTS
    (kinds / "nested" / "deeper").mkdir(parents=True)
    save("nested/deeper/inside.png", image, QUADRANTS)
    os.symlink(kinds / "rgb.png", kinds / "link.png")
    expected["link.png"] = QUADRANTS
    os.symlink(kinds / "nested", kinds / "linked_folder")
    expected["linked_folder/deeper/inside.png"] = QUADRANTS  # read once: first path in sorted order
    del expected["nested/deeper/inside.png"]
    os.symlink(kinds, kinds / "nested" / "loop")  # a link to an ancestor: read once, no endless walk
    # Skipped, each with its reason.
    (kinds / "empty.jpg").write_bytes(b"")
    _write(tmp := root / "download.jpg", size=(64, 64), fmt="JPEG")
    whole = tmp.read_bytes()
    tmp.unlink()
    (kinds / "truncated.jpg").write_bytes(whole[: 3 * len(whole) // 4])  # an interrupted download
    (kinds / "truncated.png").write_bytes(data[:-20])
    (kinds / "notes.txt").write_text("not an image")
    (kinds / "page.jpg").write_text("<html>a web page saved as .jpg</html>")
    image.save(kinds / "scan.tiff")
    image.save(kinds / "tiff_inside.jpg", format="TIFF")
    image.quantize(8).save(kinds / "palette.bmp")
    image.save(kinds / "anim.webp", save_all=True, append_images=[image.rotate(90)], lossless=True)
    os.symlink(kinds / "gone.png", kinds / "dangling.png")
    # Not the user's data: ignored without a word, even where they hold images.
    (kinds / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (kinds / "._rgb.png").write_bytes(b"\0\5\26\7AppleDouble")
    (kinds / ".ipynb_checkpoints").mkdir()
    image.save(kinds / ".ipynb_checkpoints" / "rgb-checkpoint.png")
    (kinds / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    for hidden in (".ipynb_checkpoints", "__MACOSX", ".git"):
        (root / hidden).mkdir()
        image.save(root / hidden / "x.png")
    for i in range(30):
        _write(root / "other" / f"{i}.jpg", seed=i, fmt="JPEG")
    return expected


SKIPPED = {"empty.jpg": "empty file", "truncated.jpg": "TensorFlow cannot decode",
           "truncated.png": "damaged (OSError: Truncated", "notes.txt": "not a supported image type (.txt",
           "page.jpg": "not an image", "scan.tiff": "not a supported image type (.tiff",
           "tiff_inside.jpg": "TensorFlow cannot decode TIFF", "palette.bmp": "palette BMP",
           "dangling.png": "broken symbolic link", "anim.webp": "WebP Animation must be 4 channel"}


def test_folders_as_users_have_them(tmp_path):
    from pn_tf.data_sources import FolderData

    expected = _users_folder(tmp_path / "images")
    data = FolderData(str(tmp_path / "images"), image_size=16)
    assert data.class_names == ["kinds", "other"]
    kinds = os.path.join(data.folder.root, "kinds")
    names = [os.path.relpath(p, kinds) for p, label in data.folder.files if label == 0]
    assert sorted(names) == sorted(expected)
    assert sorted(os.path.basename(p) for p, _ in data.skipped) == sorted(SKIPPED)
    for path, reason in data.skipped:
        assert SKIPPED[os.path.basename(path)] in reason, (path, reason)
    images, labels = [], []
    for x, y in data.batches("train", 64, training=False):
        images.extend(x.numpy())
        labels.extend(y.numpy())
    assert len(images) == data.count("train") == len(expected) + 30  # none dropped while decoding
    assert data.folder.orientation == {**{os.path.join(kinds, f"exif{o}.jpg"): o for o in range(2, 9)},
                                       os.path.join(kinds, "portrait.jpg"): 6}
    for (path, label), image in zip(data.folder.files, images):
        if label == 0:
            want = expected[os.path.relpath(path, kinds)]
            got = _corners(image)
            for w, g in zip(want, got):
                assert np.abs(np.asarray(w, float) - g).max() <= 24, (path, want, got)
    # The augmenting path takes the orientations too (random crops and flips follow the turn).
    assert sum(int(y.shape[0]) for _, y in data.batches("train", 8, training=True)) == 8 * (len(images) // 8)


def test_exif_orientation_matches_what_a_viewer_shows():
    import tensorflow as tf
    from PIL import Image, ImageOps

    from pn_tf.image_folder import _upright

    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # 2 x 3: every turn differs
    for o in range(1, 9):
        shown = Image.fromarray(stored)
        shown.getexif()[0x0112] = o
        want = np.array(ImageOps.exif_transpose(shown))  # what Pillow, like a photo viewer, shows
        got = _upright(tf.constant(stored), tf.constant(o)).numpy()
        assert got.shape == want.shape and (got == want).all(), o


def test_a_file_is_complete_by_its_end_marker(tmp_path):
    from pn_tf.image_folder import _complete

    _write(tmp_path / "big.jpg", size=(700, 700), fmt="JPEG")  # noise: well over 128 KiB
    whole = (tmp_path / "big.jpg").read_bytes()
    assert len(whole) > 3 * 2**16

    def complete(name, fmt="JPEG"):
        with open(tmp_path / name, "rb") as f:
            return _complete(f, os.path.getsize(tmp_path / name), fmt)

    (tmp_path / "seft.jpg").write_bytes(whole + b"\0" * 2000 + b"SEFT")  # a phone's trailer
    (tmp_path / "cut.jpg").write_bytes(whole[:-3000])
    (tmp_path / "small_cut.jpg").write_bytes(whole[:100_000])  # its header's thumbnail could end in 0xFFD9
    assert complete("big.jpg") and complete("seft.jpg")
    assert not complete("cut.jpg") and not complete("small_cut.jpg")
    assert not complete("big.jpg", "BMP")  # no end marker: decoded during the scan
