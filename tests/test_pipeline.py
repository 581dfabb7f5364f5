"""The pipeline command: end to end at a tiny budget, resume after SIGKILL, bad inputs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pn_tf.pipeline import Pipeline, PipelineError, RunConfig
from tests.conftest import REPO_ROOT

TINY = [
    "--flagfile=configs/quickstart.flags", "--baseline_weights=", "--baseline_epochs=1",
    "--baseline_schedule=constant", "--baseline_lr=0.05", "--train_take=512", "--search_take=256",
    "--search_epochs=1", "--finetune_epochs=1", "--eval_take=128", "--calibration_images=64",
    "--tflite_runs=5", "--tflite=float32,int8", "--verbose=0",
]


def _command(workdir, data_dir, *extra):
    return [sys.executable, "-m", "pn_tf.train", *TINY, f"--workdir={workdir}", f"--data_dir={data_dir}", *extra]


def _run(workdir, data_dir, *extra, timeout=900, env=None):
    return subprocess.run(_command(workdir, data_dir, *extra), cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=None if env is None else {**os.environ, **env})


def test_quickstart_end_to_end_tiny(tmp_path, data_dir):
    out = _run(tmp_path / "run", data_dir, "--log_level=info")  # info: the int8 repair's log line
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    for key in ("arch", "dataset", "target_flops_reduction", "flops_reduction", "baseline", "pruned",
                "equivalence_max_abs_diff", "artifacts"):
        assert key in report, key
    for who in ("baseline", "pruned"):
        assert {"accuracy", "flops", "params", "tflite_ms"} <= set(report[who])
        assert report[who]["tflite_ms"] > 0
    assert abs(report["flops_reduction"] - 0.5) < 0.01
    assert report["pruned"]["params"] < report["baseline"]["params"]
    # Relative to the logit scale (at least 1): the 4-step baseline's BN statistics are barely
    # trained, and in some runs its logits reach thousands, where float32 resolves only ~1e-4.
    assert report["equivalence_max_rel_diff"] < 1e-5, report["equivalence_max_abs_diff"]
    assert 0 < report["latency_cpu_share"] <= 1.01
    for path in report["artifacts"].values():
        assert os.path.exists(tmp_path / "run" / path), path  # relative to the workdir
    assert (tmp_path / "run" / "report.md").read_text().startswith("# pn-tf report")
    # ResNet-56's residual ADDs overwrite their branch input: the int8 export repairs those ranges.
    assert json.loads((tmp_path / "run" / "export" / "export.json").read_text())[
        "int8_calibration_repair"] is True
    assert "int8 calibration: repaired the ranges of" in out.stderr
    assert list((tmp_path / "run" / "search" / "tensorboard").iterdir())
    # 1 epoch of 2 steps with PN batch 16: the PN terms never start, and the run says so.
    search = json.loads((tmp_path / "run" / "search" / "search.json").read_text())
    assert search["pn_start_step"] == 32
    assert "the PN terms act in only 0 of the search's 2 steps" in out.stdout
    # Nor do 2 steps close the gates down to the budget, which the run says as well.
    assert search["reached_budget"] is False and search["recipe"]["flops_reg_weight"] == 4.0
    assert "above the 0.500 budget" in out.stdout
    # Finished stages are never redone.
    again = _run(tmp_path / "run", data_dir)
    assert again.returncode == 0
    assert again.stdout.count("already finished") == 6


@pytest.mark.slow  # the fast test_own_model end-to-end run feeds a model's own input size too
def test_input_size_other_than_the_datasets_reaches_every_stage(tmp_path, data_dir):
    """imagenette at --input_size=64 (its default is 224): every stage's data must be 64 px."""
    import tensorflow_datasets as tfds

    if not tfds.builder("imagenette/160px-v2", data_dir=data_dir).is_prepared():
        pytest.skip("imagenette not prepared")
    out = _run(tmp_path / "run", data_dir, "--dataset=imagenette", "--input_size=64",
               "--train_take=128", "--search_take=64", "--eval_take=64", "--calibration_images=16",
               "--tflite=float32", "--batch_size=32", "--search_batch_size=32")
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["input_size"] == 64
    assert abs(report["flops_reduction"] - 0.5) < 0.01
    assert report["equivalence_max_rel_diff"] < 1e-5, report["equivalence_max_abs_diff"]


def test_report_warns_when_the_latency_timing_shared_the_cpu():
    from pn_tf.pipeline.stages.report import markdown

    side = {"accuracy": 0.9, "holdout_accuracy": 0.9, "flops": 1e6, "params": 10, "tflite_ms": 1.0,
            "tflite_float32_accuracy": None, "tflite_int8_accuracy": None, "widths": [4]}
    r = {"arch": "resnet56", "dataset": "cifar10", "target_flops_reduction": 0.5, "flops_reduction": 0.5,
         "latency_reduction": 0.3, "equivalence_max_abs_diff": 0.0, "equivalence_max_rel_diff": 0.0,
         "tflite_threads": 1,
         "baseline": side, "pruned": side, "artifacts": {}, "latency_cpu_share": 0.95}
    assert "Warning" not in markdown(r)
    r["latency_cpu_share"] = 0.55
    assert "**Warning:** the latency timing got only 55% of the CPU time" in markdown(r)


def test_selection_without_search(tmp_path, data_dir):
    out = _run(tmp_path / "run", data_dir, "--baseline_weights=shipped", "--selection=l1",
               "--stages=baseline,search,extract")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "skipped, --selection=l1" in out.stdout
    search = json.loads((tmp_path / "run" / "search" / "search.json").read_text())
    assert search["skipped"] and not (tmp_path / "run" / "search" / "searched.weights.h5").exists()
    extract = json.loads((tmp_path / "run" / "extract" / "extract.json").read_text())
    assert extract["selection"] == "l1" and abs(extract["flops_reduction"] - 0.5) < 0.01
    assert 0.0 <= extract["test_accuracy_before_finetune"] <= 1.0


def test_baseline_training_can_start_from_shipped_weights(tmp_path, data_dir):
    out = _run(tmp_path / "run", data_dir, "--baseline_init=shipped", "--baseline_lr=1e-6",
               "--train_take=128", "--stages=baseline", "--precision=mixed_bfloat16")
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "baseline" / "baseline.json").read_text())
    assert summary["trained"] and summary["init"]["record"]["arch"] == "resnet56"
    assert summary["recipe"]["precision"] == "mixed_bfloat16"
    # One step at a vanishing learning rate from the shipped weights keeps their accuracy
    # (a random initialization would be near 10%); the bfloat16 copy's weights came back.
    assert summary["test_accuracy"] > 0.7


def test_resume_after_sigkill(tmp_path, data_dir):
    workdir = tmp_path / "run"
    # The shipped weights: the baseline stage only evaluates them (what is resumed is the search).
    args = ("--baseline_weights=shipped", "--search_epochs=3", "--stages=baseline,search")
    proc = subprocess.Popen(_command(workdir, data_dir, *args), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = workdir / "search" / "history.csv"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 2:  # one epoch done
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (workdir / "search" / "search.json").exists()
    baseline_mtime = (workdir / "baseline" / "baseline.json").stat().st_mtime
    out = _run(workdir, data_dir, *args)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "stage baseline: already finished" in out.stdout
    epochs = [line.split(",")[0] for line in history.read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2"], epochs  # resumed after the finished epoch, not restarted
    assert (workdir / "baseline" / "baseline.json").stat().st_mtime == baseline_mtime
    assert json.loads((workdir / "search" / "search.json").read_text())["epochs"] == 3


def _config(tmp_path, data_dir, **overrides):
    values = dict(arch="resnet56", dataset="cifar10", workdir=str(tmp_path / "w"), stages=["baseline"],
                  data_dir=data_dir)
    values.update(overrides)
    return RunConfig(**values)


def _validate(config):
    """The validated pipeline (its ``config`` is the frozen, normalized one)."""
    import tensorflow as tf

    pipeline = Pipeline(config, tf.distribute.get_strategy())
    pipeline.validate()
    return pipeline


@pytest.mark.parametrize("overrides,message", [
    (dict(arch="resnet57"), "unknown --arch=resnet57"),
    (dict(stages=["baseline", "polish"]), "unknown --stages"),
    (dict(target_flops_reduction=1.5), "--target_flops_reduction must be in"),
    (dict(target_flops_reduction=0.999), "cannot remove"),
    (dict(search_epochs=0), "--search_epochs must be > 0"),
    (dict(tflite=["int4"]), "unknown --tflite"),
    (dict(round_to="tiles"), "--round_to must be a positive integer or 'tile'"),
    (dict(round_to="0"), "--round_to must be > 0"),
    (dict(round_to="tile"), "--round_to=tile cannot remove 50% of the FLOPs"),
    (dict(baseline_weights="/nonexistent/w.weights.h5"), "no such file"),
    (dict(baseline_init="/nonexistent/w.weights.h5"), "--baseline_init=/nonexistent/w.weights.h5: no such file"),
    (dict(baseline_init="shipped", baseline_weights="shipped"), "pass only one of them"),
    (dict(dataset="cifar100"), "cifar100"),
    (dict(finetune_lr=float("nan")), "--finetune_lr must be a finite number, got nan"),
    (dict(target_flops_reduction=float("inf")), "--target_flops_reduction must be a finite number"),
    (dict(input_size=4), "--arch=resnet56 cannot be built at --input_size=4"),
])
def test_bad_inputs_stop_before_work(tmp_path, data_dir, overrides, message):
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace("-", r"\-")):
        _validate(_config(tmp_path, data_dir, **overrides))
    assert not (tmp_path / "w" / "baseline").exists()


def test_workdir_that_is_a_file_is_refused(tmp_path, data_dir):
    (tmp_path / "w").write_text("not a folder")
    with pytest.raises(PipelineError, match="is a file, not a folder"):
        _validate(_config(tmp_path, data_dir))


@pytest.mark.parametrize("text,message", [
    ("{cluster: 1", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "does not name one"),
])
def test_malformed_tf_config_is_explained(text, message):
    from pn_tf.pipeline import check_tf_config

    with pytest.raises(PipelineError, match=message):
        check_tf_config(text)
    check_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')


def test_missing_dataset_names_the_data_dir(tmp_path):
    with pytest.raises(PipelineError, match=str(tmp_path / "empty")):
        _validate(_config(tmp_path, str(tmp_path / "empty")))


def test_corrupt_and_mismatched_checkpoints(tmp_path, data_dir):
    from pn_tf.models import build_model

    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"not an h5 file" * 10)
    with pytest.raises(PipelineError, match="cannot load"):
        _validate(_config(tmp_path, data_dir, baseline_weights=str(corrupt)))
    other = tmp_path / "mbv2.weights.h5"
    build_model("mobilenetv2_cifar").save_weights(other)
    with pytest.raises(PipelineError, match="cannot load"):
        _validate(_config(tmp_path, data_dir, baseline_weights=str(other)))
    with pytest.raises(PipelineError, match="cannot load"):
        _validate(_config(tmp_path, data_dir, baseline_init=str(other)))


def test_workdir_of_another_run_is_refused(tmp_path, data_dir):
    _validate(_config(tmp_path, data_dir))
    with pytest.raises(PipelineError, match="different settings"):
        _validate(_config(tmp_path, data_dir, arch="mobilenetv2_cifar"))


def test_interrupted_stage_resumes_only_in_its_precision(tmp_path, data_dir):
    from pn_tf.io import write_json

    write_json(tmp_path / "w" / "finetune" / "backup" / "precision.json", {"precision": "mixed_float16"})
    stages = ["extract", "finetune"]
    _validate(_config(tmp_path, data_dir, stages=stages, precision="mixed_float16"))
    with pytest.raises(PipelineError, match="finetune: the interrupted run .* --precision=mixed_float16"):
        _validate(_config(tmp_path, data_dir, stages=stages, precision="mixed_bfloat16"))


def test_bfloat16_stage_may_continue_in_float32_on_request(tmp_path, data_dir):
    from pn_tf.io import write_json

    write_json(tmp_path / "w" / "baseline" / "backup" / "precision.json", {"precision": "mixed_bfloat16"})
    with pytest.raises(PipelineError, match="baseline: .*--allow_precision_change"):
        _validate(_config(tmp_path, data_dir, precision="float32"))
    config = _config(tmp_path, data_dir, precision="float32", allow_precision_change=True)
    pipeline_config = _validate(config).train_config("baseline")
    assert pipeline_config.allow_precision_change and pipeline_config.precision == "float32"


@pytest.mark.parametrize("hardware,warned", [(False, True), (True, False), (None, False)])
def test_emulated_bfloat16_training_is_warned_about(tmp_path, data_dir, capsys, monkeypatch,
                                                    hardware, warned):
    import pn_tf.training

    monkeypatch.setattr(pn_tf.training, "bfloat16_hardware", lambda: hardware)
    _validate(_config(tmp_path, data_dir, precision="mixed_bfloat16"))
    assert ("bfloat16 is emulated" in capsys.readouterr().out) == warned
    _validate(_config(tmp_path, data_dir, precision="mixed_bfloat16", baseline_weights="shipped"))
    assert "bfloat16 is emulated" not in capsys.readouterr().out  # nothing trains


def test_cli_exit_code_and_message(tmp_path, data_dir):
    out = _run(tmp_path / "run", data_dir, "--arch=vgg7")
    assert out.returncode == 2
    assert "unknown --arch=vgg7" in out.stderr
    assert not (tmp_path / "run" / "baseline").exists()
    env = {"TF_CONFIG": "{not json"}
    out = _run(tmp_path / "run", data_dir, "--strategy=multi_worker", env=env)
    assert out.returncode == 2 and "TF_CONFIG is not valid JSON" in out.stderr
    out = _run(tmp_path / "run", data_dir, "--finetune_lr=nan")
    assert out.returncode == 2 and "--finetune_lr must be a finite number" in out.stderr
    assert not (tmp_path / "run" / "baseline").exists()
    # A target the network cannot reach is refused after the data was opened (and logged).
    quiet = _run(tmp_path / "run", data_dir, "--target_flops_reduction=0.999")
    chatty = _run(tmp_path / "run", data_dir, "--target_flops_reduction=0.999", "--log_level=info")
    assert quiet.returncode == chatty.returncode == 2
    assert "Load dataset info" not in quiet.stderr and "Load dataset info" in chatty.stderr


def test_console_command(tmp_path, data_dir):
    command = pathlib.Path(sys.executable).with_name("pn-tf")  # installed by tools/setup.sh
    assert command.exists(), "pn-tf is not installed: run bash tools/setup.sh"
    out = subprocess.run([str(command), "--arch=vgg7", f"--workdir={tmp_path / 'run'}",
                          f"--data_dir={data_dir}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "unknown --arch=vgg7" in out.stderr


def test_nan_loss_stops_with_message_and_keeps_backup(tmp_path):
    import keras
    import tensorflow as tf

    from pn_tf.training import NonFiniteLossError, TrainConfig, fit_classifier

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    x = np.random.RandomState(0).randn(64, 4).astype("float32")
    y = np.zeros(64, "int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    fit_classifier(model, ds, TrainConfig(epochs=1, schedule="constant", learning_rate=0.01),
                   str(tmp_path), "toy", verbose=0)
    backup = sorted(p.name for p in (tmp_path / "backup").iterdir())
    bad = ds.map(lambda a, b: (a * np.float32(np.inf), b))
    with pytest.raises(NonFiniteLossError, match="toy: the loss became"):
        fit_classifier(model, bad, TrainConfig(epochs=2, schedule="constant", learning_rate=0.01),
                       str(tmp_path), "toy", verbose=0)
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == backup


@pytest.mark.parametrize("flagfile", sorted(p.name for p in (REPO_ROOT / "configs").glob("*.flags")))
def test_every_flagfile_parses_and_validates(flagfile, tmp_path, data_dir):
    from absl import flags

    from pn_tf.checkpoints import shipped_weights
    from pn_tf.train import define_flags

    path = REPO_ROOT / "configs" / flagfile
    assert path.read_text().startswith("# "), "each flagfile starts by saying what it reproduces"
    values = flags.FlagValues()
    define_flags(values)
    values(["pn_tf.train", f"--flagfile={path}", f"--workdir={tmp_path / 'w'}", f"--data_dir={data_dir}"])
    if values.dataset == "imagenet2012":
        with pytest.raises(PipelineError, match="imagenet2012|GPU"):
            Pipeline.from_flags(values)
    elif values.baseline_weights == "shipped" and not shipped_weights(values.arch, "cifar10"):
        pytest.skip("no shipped baseline for this architecture")
    else:
        Pipeline.from_flags(values)


@pytest.mark.parametrize("preset,expected", [(None, "1"), ("0", "0")])
def test_onednn_kernels_default_on_unless_opted_out(preset, expected):
    """TensorFlow enables oneDNN by itself only on AVX512/AMX-class CPUs; pn-tf asks for it."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if preset is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = preset
    code = "import os, pn_tf; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == expected


def test_progress_output_follows_the_terminal(tmp_path, data_dir, monkeypatch):
    assert _validate(_config(tmp_path, data_dir)).config.verbose == 2  # captured: a line per epoch
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    # a terminal: a progress bar while the epoch runs
    assert _validate(_config(tmp_path, data_dir)).config.verbose == 1
    assert _validate(_config(tmp_path, data_dir, verbose=0)).config.verbose == 0
