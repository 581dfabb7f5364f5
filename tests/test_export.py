"""Export stage: artifact round trips, TFLite vs. Keras, atomic writes, deployment tools."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pn_tf import export
from pn_tf import io as io_lib
from pn_tf.graph import FlopsModel
from pn_tf.models import build_model
from pn_tf.tflite import calibration, convert, inspection, runtime, timing
from pn_tf.training import set_bn_statistics
from tests.conftest import REPO_ROOT, tfds_data_dir
from tests.helpers import conv_act_conv, random_images

NARROW = [8] * 27


def _has_cifar():
    return os.path.isdir(os.path.join(tfds_data_dir(), "cifar10"))


def _calibration_images():
    """Real training images when CIFAR-10 is there, random pixels otherwise."""
    if _has_cifar():
        return calibration.representative_dataset("cifar10", num_images=64, batch_size=16,
                                                  data_dir=tfds_data_dir())
    return [random_images((32, 32, 3), seed=s, batch=16) for s in range(4)]


def _images_like_calibration(fallback):
    """int8 ranges fit the calibration data: check on CIFAR-10 test images when calibrating on
    CIFAR-10 (random pixels leave those ranges), else on ``fallback``."""
    if _has_cifar():
        from pn_tf.data import make_dataset

        batch = make_dataset("cifar10", "test", 16, training=False, data_dir=tfds_data_dir(),
                             take=16)
        return next(iter(batch))[0].numpy()
    return fallback


def _leftovers(directory):
    return [name for name in os.listdir(directory) if ".tmp-" in name or ".old-" in name]


@pytest.fixture(scope="module")
def model():
    return build_model("resnet56", widths=NARROW)


@pytest.fixture(scope="module")
def images():
    return random_images((32, 32, 3), seed=1, batch=8)


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory):
    """One SavedModel and the three TFLite files converted from it."""
    out = tmp_path_factory.mktemp("artifacts")
    saved_model = export.export_saved_model(model, out / "saved_model")
    paths = {"saved_model": saved_model}
    for quantization in convert.QUANTIZATIONS:
        paths[quantization] = export.export_tflite(
            saved_model, out / f"m_{quantization}.tflite", quantization,
            _calibration_images() if quantization == "int8" else None)
    return paths


def test_keras_round_trip(model, images, tmp_path):
    path = export.export_keras(model, tmp_path / "m.keras")
    assert export.verify_export(model, path, images) <= 1e-5
    assert _leftovers(tmp_path) == []


def test_keras_file_loads_elsewhere_after_importing_pn_tf_layers(model, images, tmp_path):
    """The README's route for a user's own process: ``import pn_tf.layers`` registers the
    zoo's layers (fused batch norm, gates, ...); plain Keras cannot load the file."""
    path = export.export_keras(model, tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", images)
    code = ("import sys, numpy as np, pn_tf.layers, keras; m = keras.saving.load_model(sys.argv[1]); "
            "np.save(sys.argv[3], np.asarray(m(np.load(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), export.keras_outputs(model, images),
                               atol=1e-5)


def test_saved_model_serving_signature(model, images, artifacts):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(artifacts["saved_model"]))
    assert {"serve", "serving_default"} <= set(loaded.signatures)
    spec = loaded.signatures["serving_default"].structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, 32, 32, 3] and spec.dtype == tf.float32
    assert export.verify_export(model, artifacts["saved_model"], images) <= 1e-5
    np.testing.assert_allclose(loaded.serve(images).numpy(), export.keras_outputs(model, images),
                               atol=1e-5)


def test_tflite_float32_matches_keras(model, images, artifacts):
    assert export.verify_export(model, artifacts["float32"], images) <= 1e-4


def test_tflite_float16_close(model, images, artifacts):
    reference = export.keras_outputs(model, images)
    diff = export.verify_export(model, artifacts["float16"], images)
    assert diff <= 0.02 * np.abs(reference).max()


def test_tflite_int8_tracks_float(model, images, artifacts):
    """Full-integer graph with float I/O; its logits stay close to the float model's."""
    interpreter = runtime.load_interpreter(artifacts["int8"])
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert {"QUANTIZE", "DEQUANTIZE", "CONV_2D"} <= ops
    images = _images_like_calibration(images)
    reference = export.keras_outputs(model, images)
    logits = runtime.tflite_predict(artifacts["int8"], images)
    relative = np.linalg.norm(logits - reference) / np.linalg.norm(reference)
    assert relative < 0.1
    assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] > 0.99


def test_tflite_macs_match_keras_count(model, artifacts):
    expected = FlopsModel(model).total
    for quantization in convert.QUANTIZATIONS:
        assert inspection.tflite_macs(artifacts[quantization]) == expected


def test_mobilenetv2_cifar_float32(tmp_path):
    model = build_model("mobilenetv2_cifar")
    images = random_images((32, 32, 3), seed=2, batch=4)
    path = export.export_tflite(model, tmp_path / "mbv2.tflite")
    reference = export.keras_outputs(model, images)
    assert export.verify_export(model, path, images) <= 1e-4 * max(1.0, np.abs(reference).max())


def test_shufflenet_int8_stays_inside_xnnpack(tmp_path):
    """h-swish is written so that XNNPACK takes the whole int8 graph (see shufflenetv2plus._act)."""
    images = random_images((64, 64, 3), seed=3, batch=8)
    model = set_bn_statistics(
        build_model("shufflenetv2plus_small", input_size=64, num_classes=10, dropout=0.0), [images])
    fused = build_model("shufflenetv2plus_small", input_size=64, num_classes=10, dropout=0.0,
                        hard_swish="fused")
    for layer in model.layers:
        if layer.weights:
            fused.get_layer(layer.name).set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(fused(images)), np.asarray(model(images)), atol=1e-4)
    path = export.export_tflite(model, tmp_path / "shufflenet_int8.tflite", "int8", [images])
    report = inspection.delegation(path)
    assert report["partitions"] <= 2, report
    assert "HARD_SWISH" not in report["not_delegated"], report


def _old_hswish(x):
    """(x / 6) * relu6(x + 3): ``x / 6`` has one consumer, so the MUL after it may write its
    product into ``x / 6``'s buffer during calibration."""
    import keras

    gate = keras.layers.ReLU(max_value=6.0)(keras.layers.Rescaling(1.0, offset=3.0)(x))
    return keras.layers.Multiply()([keras.layers.Rescaling(1.0 / 6.0, name="x_over_6")(x), gate])


def test_int8_calibration_repair(tmp_path, caplog):
    """The converter widens the range of an input that an op overwrites in place
    (tensorflow/tensorflow#127842); export_tflite puts the true range back."""
    model = conv_act_conv(_old_hswish)
    calibration_batch = random_images((16, 16, 3), seed=3, batch=16)
    images = random_images((16, 16, 3), seed=4, batch=16)
    reference = export.keras_outputs(model, images)
    errors, scales = {}, {}
    for repair in (True, False):
        with caplog.at_level("INFO", logger="pn_tf.tflite.convert"):
            path = export.export_tflite(model, tmp_path / f"repair_{repair}.tflite", "int8",
                                        [calibration_batch], repair_calibration=repair)
        errors[repair] = float(np.abs(runtime.tflite_predict(path, images) - reference).mean())
        interpreter = runtime.load_interpreter(path)
        # the scale of the x / 6 tensor (the MUL-by-constant output feeding the product)
        scales[repair] = [d["quantization"][0] for d in interpreter.get_tensor_details()
                          if "x_over_6" in d["name"] and d["name"].endswith("mul")]
    # x / 6, and the input scaling (x / 32 has one consumer, the ADD of -4)
    assert "repaired the ranges of 2 tensors" in caplog.text
    # x / 6 spans about 1/6 of x; unrepaired it was given the product's range (about x's)
    assert scales[False][0] > 2 * scales[True][0], scales
    assert errors[True] < 0.8 * errors[False], errors


def _dead_channel_model():
    """A one-channel conv that never fires (its BN shift keeps the ReLU at zero), as a group
    pruned to one channel can be."""
    import keras

    x = keras.Input((8, 8, 3))
    bn, conv = keras.layers.BatchNormalization(), keras.layers.Conv2D(1, 3, padding="same", use_bias=False)
    y = keras.layers.ReLU()(bn(conv(x)))
    model = keras.Model(x, keras.layers.Conv2D(4, 1)(y))
    conv.set_weights([np.full((3, 3, 3, 1), 1e-3)])  # at most 27 * 255 * 1e-3 = 6.9 before BN
    bn.set_weights([np.ones(1), np.array([-10.0]), np.zeros(1), np.ones(1)])
    return model


def test_int8_tensors_zero_in_calibration_still_run_in_xnnpack(tmp_path):
    """A tensor zero on every calibration batch gets the empty range [0, 0], whose int8 scale 0
    XNNPACK refuses (the model did not load: 'failed to create XNNPACK runtime'); the export and
    the latency tables' conversion widen it, and the model runs and matches Keras."""
    from pn_tf.latency import units as unit_lib

    model = _dead_channel_model()
    images = random_images((8, 8, 3), seed=6, batch=16)
    reference = export.keras_outputs(model, images)
    path = export.export_tflite(model, tmp_path / "dead.tflite", "int8", [images])
    out = runtime.tflite_predict(path, images)
    assert np.abs(out - reference).max() <= 0.05 * np.abs(reference).max()
    unit = unit_lib.convert(unit_lib.batch1_model(model), tmp_path / "unit.tflite", "int8")
    unit_lib.timing_interpreter(unit, 1, np.random.default_rng(0)).invoke()
    import tensorflow as tf
    from tensorflow.lite.tools import flatbuffer_utils

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter([[images]])
    converter._experimental_calibrate_only = True
    calibrated = flatbuffer_utils.convert_bytearray_to_object(bytearray(converter.convert()))
    widened = calibration.widen_empty_ranges(calibrated)
    assert len(widened) >= 1 and all(new == (0.0, calibration.MIN_RANGE) for _, _, new in widened)
    assert all(0.0 <= recorded[1] - recorded[0] < calibration.MIN_RANGE for _, recorded, _ in widened)


def test_repair_finds_the_residual_branches(model):
    """In ResNet-56 the residual ADD writes into its branch input: exactly the 27 blocks'
    second convs get a widened range; a repaired model has nothing left to repair."""
    import tensorflow as tf

    images = random_images((32, 32, 3), seed=5, batch=8)
    generate = lambda: iter([[images]])  # noqa: E731

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = generate
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    content, repaired = calibration.repair_calibrated_ranges(calibrated, generate)
    names = [name for name, _, _ in repaired]
    assert len(names) == 27 and all("_2_conv" in name for name in names), names
    assert all(recorded[1] - recorded[0] > true[1] - true[0] for _, recorded, true in repaired)
    again, none = calibration.repair_calibrated_ranges(content, generate)
    assert none == [] and again == content


def test_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="'int4'"):
        export.export_tflite(model, tmp_path / "m.tflite", quantization="int4")
    with pytest.raises(ValueError, match="representative_data"):
        export.export_tflite(model, tmp_path / "m.tflite", quantization="int8")
    with pytest.raises(ValueError, match=".keras"):
        export.export_keras(model, tmp_path / "m.h5")
    with pytest.raises(FileNotFoundError):
        runtime.load_interpreter(tmp_path / "missing.tflite")
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(ValueError, match="not a valid TFLite model"):
        runtime.load_interpreter(tmp_path / "junk.tflite")
    assert sorted(os.listdir(tmp_path)) == ["junk.tflite"]


def test_failed_tflite_write_leaves_nothing(artifacts, tmp_path, monkeypatch):
    def half_then_fail(path, content):
        with open(path, "wb") as f:
            f.write(content[: len(content) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(convert, "convert_saved_model", lambda *a, **k: b"x" * 4096)
    monkeypatch.setattr(io_lib, "_write_bytes", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export.export_tflite(artifacts["saved_model"], tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_failed_conversion_leaves_nothing(artifacts, tmp_path, monkeypatch):
    from tensorflow.lite.python import lite

    def fail(self):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(lite.TFLiteSavedModelConverterV2, "convert", fail)
    with pytest.raises(RuntimeError, match="exploded"):
        export.export_tflite(artifacts["saved_model"], tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_failed_saved_model_keeps_old_and_no_temp(model, tmp_path, monkeypatch):
    target = tmp_path / "sm"
    target.mkdir()
    (target / "old.txt").write_text("previous export")

    def partial_then_fail(model, directory):
        with open(os.path.join(directory, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(export, "_write_saved_model", partial_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        export.export_saved_model(model, target)
    assert sorted(os.listdir(tmp_path)) == ["sm"]
    assert os.listdir(target) == ["old.txt"]

    monkeypatch.setattr(export, "_write_saved_model",
                        lambda model, d: open(os.path.join(d, "new.txt"), "w").close())
    export.export_saved_model(model, target)
    assert os.listdir(target) == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["sm"]


def test_failed_keras_save_leaves_nothing(model, tmp_path, monkeypatch):
    def fail(path, *args, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError("no space")

    monkeypatch.setattr(model, "save", fail)
    with pytest.raises(OSError, match="no space"):
        export.export_keras(model, tmp_path / "m.keras")
    assert os.listdir(tmp_path) == []


def _run_tool(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFDS_DATA_DIR=tfds_data_dir())
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / script), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_tflite_predict_tool(model, artifacts, tmp_path):
    from PIL import Image

    pixels = random_images((40, 52, 3), seed=3, batch=1)[0].astype(np.uint8)
    image = tmp_path / "img.png"
    Image.fromarray(pixels).save(image)
    done = _run_tool("tflite_predict.py", f"--model={artifacts['int8']}", "--labels=cifar10",
                     "--top_k=3", "--json", str(image))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["results"][0]
    assert result["file"] == str(image) and len(result["top_k"]) == 3
    from tools.tflite_predict import CIFAR10_LABELS

    assert {e["label"] for e in result["top_k"]} <= set(CIFAR10_LABELS)
    probs = [e["prob"] for e in result["top_k"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6

    (tmp_path / "bad.png").write_bytes(b"garbage")
    done = _run_tool("tflite_predict.py", f"--model={artifacts['float32']}", str(tmp_path / "bad.png"))
    assert done.returncode == 1 and "cannot read image" in done.stderr
    done = _run_tool("tflite_predict.py", f"--model={tmp_path / 'none.tflite'}", str(image))
    assert done.returncode == 1 and "no TFLite model" in done.stderr


@pytest.mark.skipif(not _has_cifar(), reason="needs cifar10 in the TFDS data dir")
def test_int8_check_tool(artifacts, tmp_path):
    done = _run_tool("int8_check.py", f"--model={artifacts['saved_model']}", "--dataset=cifar10",
                     "--calibration_images=32", "--take=64", "--json",
                     f"--out_dir={tmp_path / 'out'}", "--weights_only", "--layer_errors=5",
                     "--keep_float=avg_pool")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for name in ("float32", "int8_repaired", "int8_unrepaired", "int8_weights_only",
                 "int8_partly_float"):
        assert 0.0 <= result[name] <= 1.0 and os.path.exists(result["files"][name])
    # the narrow ResNet-56's 27 residual branches (test_repair_finds_the_residual_branches)
    assert len(result["repaired"]) == 27
    # the worst five ops, worst first; errors are in int8 steps (rounding alone: 0.29)
    errors = [row["error"] for row in result["layer_errors"]]
    assert len(errors) == 5 and errors == sorted(errors, reverse=True) and errors[-1] > 0.1
    # the global pool runs in float in the partly float model, and in int8 in the plain one
    assert len(result["float_nodes"]) == 1 and "avg_pool" in result["float_nodes"][0]
    dtypes = {}
    for name in ("int8_repaired", "int8_partly_float"):
        details = runtime.load_interpreter(result["files"][name]).get_tensor_details()
        dtypes[name] = {d["name"]: d["dtype"] for d in details}[result["float_nodes"][0]]
    assert dtypes == {"int8_repaired": np.int8, "int8_partly_float": np.float32}
    # the text form (no --json) reports the same extra rows
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from int8_check import text_report

    text = text_report(result)
    assert f"int8 weights, float activations {result['int8_weights_only']:.4f}" in text
    assert f"int8 with 1 ops in float {result['int8_partly_float']:.4f}" in text
    assert "rounding alone: 0.29" in text and result["layer_errors"][0]["op"] in text
    done = _run_tool("int8_check.py", f"--model={artifacts['saved_model']}",
                     "--calibration_images=32", "--take=64", "--keep_float=no_such_op")
    assert done.returncode == 2 and "no op output name matches" in done.stderr
    done = _run_tool("int8_check.py", f"--model={tmp_path / 'missing.keras'}")
    assert done.returncode == 2 and "neither a SavedModel directory nor a .keras file" in done.stderr


def test_bench_tool(artifacts):
    done = _run_tool("bench_tflite.py", f"--models={artifacts['float32']},{artifacts['int8']}",
                     "--runs=20", "--warmup=2")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    first, second = report["models"]
    for key in ("latency_ms", "latency_p90_ms", "flops", "size_bytes", "latency_ratio",
                "flops_ratio", "efficiency", "meets_goal", "xnnpack"):
        assert key in first and key in second
    assert first["xnnpack"]["partitions"] >= 1
    assert first["latency_ratio"] == 1.0 and second["flops_ratio"] == 1.0
    assert second["size_bytes"] < first["size_bytes"]
    assert report["flops_source"] == "tflite_graph"
    assert 0.0 < report["cpu_share"] <= 1.01  # one thread's CPU time over wall time


def test_latency_reports_the_cpu_share_it_got(artifacts):
    measured = timing.measure_latency([artifacts["float32"], artifacts["int8"]], runs=10, warmup=2)
    shares = {m["cpu_share"] for m in measured.values()}
    assert len(shares) == 1 and 0.0 < shares.pop() <= 1.01
    # A timing that got the CPU it asked for draws no warning; one that shared it does.
    assert timing.busy_timing_warning(0.97) is None
    warning = timing.busy_timing_warning(0.6)
    assert "60%" in warning and "bench_tflite.py" in warning


def test_a_busy_timing_logs_a_warning(artifacts, monkeypatch, caplog):
    interpreters = [timing.batch1_interpreter(artifacts["float32"], 1, 0)]
    monkeypatch.setattr(timing, "with_cpu_share", lambda fn, num_threads: (fn(), 0.5))
    with caplog.at_level("WARNING", logger="pn_tf.tflite.timing"):
        times, share = timing.time_interleaved(interpreters, 3, warmup=1)
    assert share == 0.5 and len(times[0]) == 3
    assert "got only 50% of the CPU time" in caplog.text


def test_cpu_share_counts_only_the_timing_thread(artifacts):
    """Another busy thread of the process (here numpy's BLAS in a Python thread, as OpenBLAS's
    spinning workers after a matrix product) is not counted as the 1-thread timing's CPU."""
    import threading

    stop = threading.Event()
    matrix = np.random.default_rng(0).random((300, 300))

    def burn():
        while not stop.is_set():
            matrix @ matrix

    burner = threading.Thread(target=burn, daemon=True)
    burner.start()
    try:
        interpreters = [timing.batch1_interpreter(artifacts["float32"], 1, 0)]
        _, share = timing.time_interleaved(interpreters, 20, warmup=2)
        _, process_share = timing.with_cpu_share(lambda: timing._time_rounds(interpreters, 20, 2, 10), 2)
    finally:
        stop.set()
        burner.join()
    assert 0.0 < share <= 1.01
    # The process as a whole did use more than the timing thread (the check is not vacuous).
    assert process_share * 2 > share * 1.05


def test_cpu_share_sees_time_spent_waiting():
    import time

    _, idle = timing.with_cpu_share(lambda: time.sleep(0.2), num_threads=1)
    _, busy = timing.with_cpu_share(lambda: sum(i * i for i in range(2_000_000)), num_threads=1)
    assert idle < 0.2 and busy > idle


@pytest.mark.slow
def test_int8_io_variant(model, artifacts, images, tmp_path):
    path = export.export_tflite(artifacts["saved_model"], tmp_path / "io.tflite", "int8",
                                _calibration_images(), int8_io="int8")
    detail = runtime.load_interpreter(path).get_input_details()[0]
    assert detail["dtype"] == np.int8
    images = _images_like_calibration(images)
    reference = export.keras_outputs(model, images)
    logits = runtime.tflite_predict(path, images)
    assert np.linalg.norm(logits - reference) / np.linalg.norm(reference) < 0.1


@pytest.mark.slow
def test_int8_accuracy_within_one_point(data_dir, tmp_path):
    """The shipped ResNet-56: int8 top-1 on the full CIFAR-10 test set within 1 point of float.

    (A briefly trained model made this flaky: its low-margin logits flip under quantization.)
    """
    from pn_tf import data as data_lib
    from pn_tf.checkpoints import load_checked, shipped_weights

    model = load_checked(build_model("resnet56", **data_lib.normalization_kwargs("cifar10")),
                         shipped_weights("resnet56", "cifar10"))
    path = export.export_tflite(model, tmp_path / "int8.tflite", "int8",
                                calibration.representative_dataset("cifar10", num_images=256, data_dir=data_dir))
    test = data_lib.make_dataset("cifar10", "test", 500, training=False, data_dir=data_dir)
    float_top1 = export.top1_accuracy(lambda x: export.keras_outputs(model, x), test)
    interpreter = runtime.load_interpreter(path)
    int8_top1 = export.top1_accuracy(lambda x: runtime.run_interpreter(interpreter, x, 500), test)
    assert float_top1 > 0.8
    assert abs(int8_top1 - float_top1) <= 0.01
