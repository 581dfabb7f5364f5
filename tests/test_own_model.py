"""The pipeline on a user's own model file and image folder: end to end, resume, bad inputs."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from pn_tf.graph import FlopsModel
from pn_tf.pipeline import Pipeline, PipelineError, RunConfig
from tests.conftest import REPO_ROOT

CLASSES = ("cats", "dogs", "owls")
TINY = ["--target_flops_reduction=0.4", "--search_epochs=1", "--finetune_epochs=1",
        "--tflite=float32,int8", "--tflite_runs=5", "--calibration_images=32", "--search_batch_size=4",
        "--batch_size=16", "--finetune_lr=0.01", "--pn_batch_size=4", "--verbose=0"]


def _write_image(path, seed, size=40):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    pixels = np.clip(rng.randn(size, size, 3) * 40 + 60 * (seed % 3) + 40, 0, 255).astype("uint8")
    Image.fromarray(pixels).save(path, format="JPEG")


def make_folder(root, per_class=40, broken=True):
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            _write_image(root / name / f"{i:03d}.jpg", seed=3 * i + c)
    if broken:  # one file that is no image, one JPEG cut in half (its header still reads)
        (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        whole = (root / "owls" / "000.jpg").read_bytes()
        (root / "owls" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    return root


def make_model(path, classes=len(CLASSES), size=32, softmax=True, rescaling=True):
    """A classifier with a nested Sequential backbone, saved as .keras (size None: any size)."""
    import keras

    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([
        keras.Input((size, size, 3)),
        keras.layers.Conv2D(16, 3, padding="same"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.Conv2D(24, 3, strides=2, padding="same"), keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(24, 3, padding="same"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
    ], name="backbone")
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs) if rescaling else inputs
    x = keras.layers.GlobalAveragePooling2D()(backbone(x))
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None)(x)
    keras.Model(inputs, outputs, name="tiny_classifier").save(path)
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    return {"model": str(make_model(root / "tiny.keras")), "images": str(make_folder(root / "images"))}


def _command(own, workdir, *extra):
    return [sys.executable, "-m", "pn_tf.train", f"--model={own['model']}",
            f"--image_dir={own['images']}", f"--workdir={workdir}", *TINY, *extra]


def _run(own, workdir, *extra):
    return subprocess.run(_command(own, workdir, *extra), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900)


def _check_report(workdir):
    report = json.loads((workdir / "report.json").read_text())
    for key in ("arch", "dataset", "target_flops_reduction", "flops_reduction", "baseline", "pruned",
                "equivalence_max_abs_diff", "latency_reduction", "artifacts"):
        assert key in report, key
    for who in ("baseline", "pruned"):
        assert {"accuracy", "holdout_accuracy", "flops", "params", "tflite_ms"} <= set(report[who])
        assert report[who]["tflite_ms"] > 0
    assert abs(report["flops_reduction"] - 0.4) < 0.01
    assert report["pruned"]["params"] < report["baseline"]["params"]
    assert report["equivalence_max_rel_diff"] < 1e-5
    assert report["class_names"] == list(CLASSES) and report["accuracy_split"] == "holdout"
    assert report["skipped_images"] == 2  # broken.jpg and the truncated JPEG, both found by the scan
    labels = workdir / "export" / "labels.txt"
    assert labels.read_text().split() == list(CLASSES)
    assert (workdir / "export" / "pruned_int8.tflite").exists()
    return report


SIZES = ("--search_batch_size", "--batch_size", "--pn_batch_size", "--calibration_images")


def test_own_model_and_image_folder_end_to_end(own, tmp_path):
    """A folder of 3 classes x 30 images and no batch-size flags: the sizes follow the data, every
    stage runs, and the run ends with its answer."""
    small = dict(own, images=str(make_folder(tmp_path / "small", per_class=30)))
    command = [f for f in _command(small, tmp_path / "run") if not f.startswith(SIZES)]
    out = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    report = _check_report(tmp_path / "run")
    assert report["model_file"] == own["model"] and report["dataset"] == small["images"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "[pn-tf] sizes that fit the data: --batch_size=" in out.stdout
    assert config["search_batch_size"] < 256 and config["batch_size"] < 128  # ~9 and ~81 of 90 images
    last = out.stdout.strip().splitlines()[-6:]
    assert last[0].startswith("[pn-tf] done:") and "Target FLOPs reduction 40.0%" in last[1]
    assert "pruned_int8.tflite" in last[4] and "labels.txt" in last[4]
    assert last[5] == f"  report: {tmp_path / 'run' / 'report.md'}"
    # The pruned model keeps the softmax output and the user's layer names, without gates.
    import keras

    pruned = keras.saving.load_model(tmp_path / "run" / "export" / "pruned.keras")
    names = {layer.name for layer in pruned.layers}
    assert not any("gate" in name for name in names)
    assert pruned.layers[-1].get_config()["activation"] == "softmax"
    from pn_tf.pipeline.artifacts import read_labels
    from tools.tflite_predict import classify

    int8 = tmp_path / "run" / "export" / "pruned_int8.tflite"
    assert read_labels(int8) == list(CLASSES)
    image = os.path.join(small["images"], "cats", "000.jpg")
    top = classify(str(int8), [image], k=3, labels=read_labels(int8))[0]["top_k"]
    assert {entry["label"] for entry in top} == set(CLASSES)
    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("already finished") == 6
    assert again.stdout.strip().splitlines()[-6:] == last  # a finished run still ends with its answer


@pytest.mark.slow
def test_own_model_resumes_after_sigkill_in_every_stage(own, tmp_path):
    """Killed in each stage in turn (its marker not yet written): the next run finishes it.

    The run that stops in stage k first finishes stage k-1, killed in the run before.
    """
    workdir = tmp_path / "run"
    stages = ("baseline", "search", "extract", "finetune", "export", "report")
    interrupted = []
    for stage in stages:
        proc = subprocess.Popen(_command(own, workdir, "--stages=" + ",".join(stages[:stages.index(stage) + 1])),
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in proc.stdout:  # kill as soon as the stage has started
            if f"stage {stage}: starting" in line:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not (workdir / stage / f"{stage}.json").exists():
            interrupted.append(stage)
    assert len(interrupted) >= 4, interrupted  # a stage of a tiny model may finish before the kill
    out = _run(own, workdir)
    assert out.returncode == 0, out.stderr[-4000:]
    _check_report(workdir)


def _config(tmp_path, own, **overrides):
    values = dict(model=own["model"], image_dir=own["images"], workdir=str(tmp_path / "w"),
                  stages=["baseline"])
    values.update(overrides)
    return RunConfig(**values)


def _validate(config):
    import tensorflow as tf

    pipeline = Pipeline(config, tf.distribute.get_strategy())
    pipeline.validate()
    return pipeline


def test_own_model_settings_are_resolved(own, tmp_path):
    pipeline = _validate(_config(tmp_path, own))
    c = pipeline.config
    assert (c.arch, c.dataset, c.input_size, c.baseline_epochs, c.input_range) == ("", "", 32, 0, "0_255")
    assert pipeline.data.num_classes == 3 and not pipeline.data.has_test


def _bad_models(tmp_path):
    import keras

    inputs = keras.Input((10,))
    keras.Model(inputs, keras.layers.Dense(3)(inputs)).save(tmp_path / "vector.keras")
    make_model(tmp_path / "five.keras", classes=5)
    (tmp_path / "corrupt.keras").write_bytes(b"PK not a zip")


@pytest.mark.parametrize("overrides,message", [
    (dict(model="{tmp}/vector.keras"), "not images"),
    (dict(model="{tmp}/five.keras"), "outputs 5 class scores, but .* has 3 classes"),
    (dict(model="{tmp}/corrupt.keras"), "not a valid .keras file"),
    (dict(model="{tmp}/missing.keras"), "does not exist"),
    (dict(arch="resnet56"), "pass --model .* or --arch .*, not both"),
    (dict(dataset="cifar10"), "pass --image_dir .* or --dataset .*, not both"),
    (dict(image_dir="{tmp}/one_class"), "at least two class sub-folders"),
    (dict(image_dir="{tmp}/unreadable"), "no readable image"),
    (dict(baseline_weights="shipped"), "--baseline_weights go with --arch"),
    (dict(input_size=64), "--input_size=64, but"),
    (dict(exclude=["no_such_layer"]), "--exclude names no layer"),
    (dict(search_eval_split="test", stages=["search"]), "needs a test split"),
    (dict(stages=["search"], search_batch_size=512), "holdout split .* has \\d+ images, fewer than"),
])
def test_bad_own_inputs_stop_before_work(own, tmp_path, overrides, message):
    _bad_models(tmp_path)
    make_folder(tmp_path / "one_class" / "only", per_class=2, broken=False)
    for name in CLASSES[:2]:
        (tmp_path / "unreadable" / name).mkdir(parents=True)
        (tmp_path / "unreadable" / name / "x.jpg").write_bytes(b"junk")
    overrides = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v
                 for k, v in overrides.items()}
    with pytest.raises(PipelineError, match=message):
        _validate(_config(tmp_path, own, **overrides))
    assert not (tmp_path / "w" / "baseline").exists()


def test_a_model_tflite_cannot_convert_is_refused_before_any_stage(own, tmp_path):
    """The export and the report need TFLite files: a model with an op the converter rejects
    (here MaxPool3D, as in a video network; Swin's tf.Roll likewise) is refused at validation
    with the converter's reason, not after the search and fine-tuning."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_b")(x)  # conv_a's channels prune
    x = keras.layers.Reshape((32, 32, 8, 1))(x)
    x = keras.layers.MaxPooling3D((2, 2, 2), name="pool3d")(x)
    x = keras.layers.GlobalAveragePooling3D()(x)
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(tmp_path / "pool3d.keras")
    every = ["baseline", "search", "extract", "finetune", "export", "report"]
    rejected = "cannot be converted to TFLite \\(ConverterError: 'tf.MaxPool3D' op is neither"
    with pytest.raises(PipelineError, match=rejected):
        _validate(_config(tmp_path, own, model=str(tmp_path / "pool3d.keras"), stages=every))
    assert not (tmp_path / "w" / "baseline").exists()
    _validate(_config(tmp_path, own, model=str(tmp_path / "pool3d.keras")))  # no export: no check
    _validate(_config(tmp_path, own, stages=every, workdir=str(tmp_path / "w2")))  # converts


def test_zoo_refuses_own_model_flags(tmp_path, data_dir):
    for overrides, message in ((dict(input_range="0_1"), "zoo architectures take pixels 0..255"),
                               (dict(exclude=["conv1"]), "--exclude go with --model"),
                               (dict(test_dir=str(tmp_path)), "--test_dir goes with --image_dir")):
        config = RunConfig(arch="resnet56", workdir=str(tmp_path / "w"), stages=["baseline"],
                           data_dir=data_dir, **overrides)
        with pytest.raises(PipelineError, match=message):
            _validate(config)


def test_model_of_any_input_size_is_pruned_at_input_size(own, tmp_path):
    import keras

    path = str(make_model(tmp_path / "any.keras", size=None))
    with pytest.raises(PipelineError, match="takes images of any size; pass --input_size"):
        _validate(_config(tmp_path, own, model=path))
    pipeline = _validate(_config(tmp_path, own, model=path, input_size=40))
    network = pipeline.build_network()
    assert tuple(network.inputs[0].shape) == (None, 40, 40, 3)
    original = keras.saving.load_model(path)
    images = pipeline.images("holdout", 4)
    np.testing.assert_allclose(network(images), original(images), rtol=1e-5, atol=1e-6)
    sequential = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(8, 3),
                                   keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
                                   keras.layers.Dense(3)])
    sequential.save(tmp_path / "seq.keras")
    pipeline = _validate(_config(tmp_path, own, model=str(tmp_path / "seq.keras"), input_size=24,
                                 workdir=str(tmp_path / "w2")))
    assert pipeline.config.input_size == 24 and FlopsModel(pipeline.build_network()).total > 0


def test_model_without_preprocessing_is_warned_about(tmp_path, capsys):
    root = tmp_path
    own = {"model": str(make_model(root / "raw.keras", rescaling=False)),
           "images": str(make_folder(root / "images", per_class=12, broken=False))}
    _validate(_config(tmp_path, own))
    assert "does not start with a Rescaling or Normalization layer" in capsys.readouterr().out
    pipeline = _validate(_config(tmp_path, own, input_range="-1_1", workdir=str(tmp_path / "w2")))
    images = pipeline.images("holdout", 4)
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.min() < 0.0


def test_cli_names_a_bad_image_folder(own, tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    out = subprocess.run([sys.executable, "-m", "pn_tf.train", f"--model={own['model']}",
                          f"--image_dir={tmp_path / 'empty'}", f"--workdir={tmp_path / 'run'}"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "at least two class sub-folders" in out.stderr
    assert not (tmp_path / "run" / "baseline").exists()


def test_stale_batchnorm_statistics_are_refreshed_after_training():
    """keras.applications' BN momentum 0.999 averages over 1000 steps: a short run leaves its
    moving statistics stale; the zoo's 0.9 (10 steps) is left alone."""
    import keras
    import tensorflow as tf

    from pn_tf.training import refresh_stale_batchnorm

    rng = np.random.RandomState(0)
    images = (rng.rand(64, 8, 8, 3) * 255).astype("float32")
    batches = tf.data.Dataset.from_tensor_slices((images, np.zeros(64, "int32"))).batch(16)
    for momentum, refreshed in ((0.999, True), (0.9, False)):
        inputs = keras.Input((8, 8, 3))
        bn = keras.layers.BatchNormalization(momentum=momentum)
        model = keras.Model(inputs, bn(keras.layers.Conv2D(4, 3)(inputs)))
        result = refresh_stale_batchnorm(model, batches, steps=200)
        assert (result is not None) == refreshed
        if refreshed:
            assert result["layers"] == 1 and result["longest_span_steps"] == 1000
            conv = model.layers[1](images)
            mean = np.asarray(tf.reduce_mean(conv, axis=(0, 1, 2)))
            np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-3)
            assert bn.momentum == momentum


def test_a_model_file_loads_the_packages_of_its_classes(tmp_path):
    """A .keras file names each class's package: packages beyond Keras and pn-tf are imported
    before loading (keras-hub's classes register on import), and a missing one is named."""
    import json
    import zipfile

    from pn_tf.model_file import ModelFileError, _class_packages, load_model

    config = {"module": "keras", "class_name": "Functional", "config": {"layers": [
        {"module": "keras.layers", "class_name": "Dense", "config": {}},
        {"module": "no_such_package_xyz.layers", "class_name": "Block", "config": {}},
        {"module": "json", "class_name": "NotALayer", "config": {}}]}}
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    assert _class_packages(str(path)) == ["json", "no_such_package_xyz"]
    with pytest.raises(ModelFileError, match="package 'no_such_package_xyz', which is not installed"):
        load_model(str(path))


def test_a_keras_hub_preprocessor_outside_the_graph_is_named():
    """keras-hub's ImageClassifier keeps its preprocessor beside the graph: the warning says so
    and which --input_range its image converter produces."""
    import types

    from pn_tf.pipeline.models import _preprocessor_note

    converter = types.SimpleNamespace(scale=1 / 127.5, offset=-1.0)
    model = types.SimpleNamespace(preprocessor=types.SimpleNamespace(image_converter=converter))
    note = _preprocessor_note(model)
    assert "runs outside its graph" in note and "--input_range=-1_1" in note
    converter.scale, converter.offset = 0.5, 0.1
    assert "save the model with the scaling as a Rescaling layer" in _preprocessor_note(model)
    assert _preprocessor_note(types.SimpleNamespace()) is None
