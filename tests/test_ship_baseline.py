"""tools/ship_baseline.py: a finished baseline run becomes the shipped pretrained model."""

import json
import sys

import numpy as np
import pytest

from pn_tf.data import normalization_kwargs
from pn_tf.io import write_json
from pn_tf.models import build_model
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
from ship_baseline import ShipError, reproduce_command, ship  # noqa: E402

CONFIG = {"arch": "resnet56", "dataset": "cifar10", "input_size": 32, "num_classes": 10,
          "batch_size": 128, "baseline_epochs": 30, "baseline_lr": 0.1,
          "baseline_schedule": "cosine", "weight_decay": 5e-4, "seed": 0, "search_epochs": 200}


def _run_dir(tmp_path, summary):
    workdir = tmp_path / "run"
    (workdir / "baseline").mkdir(parents=True)
    write_json(str(workdir / "config.json"), CONFIG)
    write_json(str(workdir / "baseline" / "baseline.json"), summary)
    model = build_model("resnet56", **normalization_kwargs("cifar10"))
    model.save_weights(str(workdir / "baseline" / "baseline.weights.h5"))
    return workdir, model


def test_ship_copies_weights_and_records_the_recipe(tmp_path):
    summary = {"trained": True, "test_accuracy": 0.9123, "holdout_accuracy": 0.915,
               "train_split": "train_main", "batch_size": 128, "recipe": {"epochs": 30},
               "train_seconds_this_run": 10.0}
    workdir, model = _run_dir(tmp_path, summary)
    out = tmp_path / "pretrained"
    record = ship(str(workdir), str(out), note="short schedule")
    assert record["test_accuracy"] == 0.9123 and record["note"] == "short schedule"
    assert record["command"] == reproduce_command(CONFIG, str(workdir))
    assert "--baseline_epochs=30" in record["command"] and "--weight_decay=0.0005" in record["command"]
    assert "search_epochs" not in record["command"]
    assert json.loads((out / "resnet56_cifar10.json").read_text())["recipe"] == {"epochs": 30}
    shipped = build_model("resnet56", **normalization_kwargs("cifar10"))
    shipped.load_weights(str(out / "resnet56_cifar10.weights.h5"))
    for a, b in zip(model.get_weights(), shipped.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ShipError, match="--force"):
        ship(str(workdir), str(out))
    ship(str(workdir), str(out), force=True)


def test_ship_keeps_the_record_of_the_weights_training_started_from(tmp_path):
    earlier = {"test_accuracy": 0.88, "command": "python -m pn_tf.train --baseline_epochs=30"}
    summary = {"trained": True, "test_accuracy": 0.91, "holdout_accuracy": 0.915,
               "init": {"weights": "/somewhere/resnet56_cifar10.weights.h5", "record": earlier}}
    workdir, _ = _run_dir(tmp_path, summary)
    config = dict(CONFIG, baseline_init="shipped")
    write_json(str(workdir / "config.json"), config)
    record = ship(str(workdir), str(tmp_path / "out"))
    assert record["continued_from"] == earlier
    assert "--baseline_init=shipped" in record["command"]
    assert "--baseline_init" not in reproduce_command(dict(CONFIG, baseline_init=""), "w")


def test_ship_records_a_precision_change_of_the_run(tmp_path):
    changes = [{"after_epoch": 95, "from": "mixed_bfloat16", "to": "float32"}]
    summary = {"trained": True, "test_accuracy": 0.91, "holdout_accuracy": 0.915,
               "precision_changes": changes}
    workdir, _ = _run_dir(tmp_path, summary)
    assert ship(str(workdir), str(tmp_path / "out"))["precision_changes"] == changes
    summary.pop("precision_changes")
    workdir, _ = _run_dir(tmp_path / "other", summary)
    assert "precision_changes" not in ship(str(workdir), str(tmp_path / "out2"))


def test_ship_refuses_runs_that_did_not_train(tmp_path):
    workdir, _ = _run_dir(tmp_path, {"trained": False, "test_accuracy": 0.9,
                                     "holdout_accuracy": 0.9})
    with pytest.raises(ShipError, match="loaded weights"):
        ship(str(workdir), str(tmp_path / "out"))
    write_json(str(workdir / "baseline" / "baseline.json"),
               {"trained": True, "test_accuracy": float("nan"), "holdout_accuracy": 0.9})
    with pytest.raises(ShipError, match="finite test_accuracy"):
        ship(str(workdir), str(tmp_path / "out"))
    with pytest.raises(ShipError, match="not a pn_tf.train workdir"):
        ship(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
