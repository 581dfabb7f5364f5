"""Ships a finished baseline run as the pretrained model of its architecture and dataset.

    python tools/ship_baseline.py --workdir=runs/baseline_resnet56_e30 [--note="..."]

Reads a pipeline workdir whose ``baseline`` stage trained a model (``config.json``,
``baseline/baseline.json``, ``baseline/baseline.weights.h5``), checks that the weights load into
the architecture and that the recorded accuracies are finite, and writes
``<pretrained_dir>/<arch>_<dataset>.weights.h5`` with a ``.json`` beside it: test and held-out
accuracy, the recipe, the command that reproduces the run (rebuilt from ``config.json``) and
``--note``; for a run started from other weights (``--baseline_init``), the record of those
weights as ``continued_from``. Both files are written atomically. ``--pretrained_dir`` defaults to
``pn_tf/pretrained``, where ``--baseline_weights=shipped`` looks. An existing shipped baseline
is replaced only with ``--force``.
"""

import json
import math
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pn_tf  # noqa: E402,F401 -- first, so TensorFlow starts with pn-tf's defaults (oneDNN on)
from pn_tf.pipeline import artifacts  # noqa: E402

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """The command line (defined only when run as a script, so tests can import this file)."""
    flags.DEFINE_string("workdir", None, "Pipeline workdir whose baseline stage trained the model.")
    flags.DEFINE_string("pretrained_dir", None, "Where to ship (default: pn_tf/pretrained).")
    flags.DEFINE_string("note", "", "Free text stored in the .json (e.g. what the run fell short of).")
    flags.DEFINE_bool("force", False, "Replace an already shipped baseline.")
    flags.mark_flag_as_required("workdir")

# config.json keys that decide the baseline, in the order the command lists them.
COMMAND_FLAGS = ("arch", "dataset", "input_size", "num_classes", "baseline_init", "batch_size",
                 "baseline_epochs", "baseline_lr", "baseline_schedule", "weight_decay", "precision",
                 "seed")


class ShipError(ValueError):
    """The workdir does not hold a finished, trained baseline."""


def _load_json(path, what):
    if not os.path.isfile(path):
        raise ShipError(f"{path} is missing: {what}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ShipError(f"{path} is not valid JSON ({err}); rerun the baseline stage") from err


def reproduce_command(config, workdir):
    """The ``python -m pn_tf.train`` command that trains this baseline again."""
    parts = ["python -m pn_tf.train", "--stages=baseline"]
    parts += [f"--{key}={config[key]}" for key in COMMAND_FLAGS if config.get(key) not in (None, "")]
    parts.append(f"--workdir={workdir}")
    return " ".join(parts)


def ship(workdir, pretrained_dir, note="", force=False):
    """Checks the run and writes the weights and their record; returns the record."""
    from pn_tf.checkpoints import load_checked, record_path
    from pn_tf.data import normalization_kwargs
    from pn_tf.io import atomic_path, write_json
    from pn_tf.models import build_model

    config = _load_json(os.path.join(workdir, artifacts.CONFIG), "not a pn_tf.train workdir")
    summary = _load_json(artifacts.summary_file(workdir, "baseline"),
                         "the baseline stage has not finished here")
    weights = os.path.join(workdir, "baseline", artifacts.BASELINE_WEIGHTS)
    if not summary.get("trained"):
        raise ShipError(f"{workdir}: the baseline stage loaded weights instead of training them; "
                        "ship the run that trained them")
    for key in ("test_accuracy", "holdout_accuracy"):
        value = summary.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ShipError(f"{workdir}: baseline.json has no finite {key} ({value!r})")
    if not os.path.isfile(weights):
        raise ShipError(f"{weights} is missing")
    arch, dataset = config["arch"], config["dataset"]
    model = build_model(arch, input_size=config.get("input_size"),
                        num_classes=config.get("num_classes"), **normalization_kwargs(dataset))
    load_checked(model, weights)

    name = f"{arch}_{dataset}"
    target = os.path.join(pretrained_dir, f"{name}.weights.h5")
    if os.path.exists(target) and not force:
        raise ShipError(f"{target} exists; pass --force to replace it")
    record = {
        "arch": arch, "dataset": dataset,
        "test_accuracy": round(float(summary["test_accuracy"]), 4),
        "holdout_accuracy": round(float(summary["holdout_accuracy"]), 4),
        "train_split": summary.get("train_split"), "batch_size": summary.get("batch_size"),
        "recipe": summary.get("recipe"),
        "train_seconds_last_run": summary.get("train_seconds_this_run"),
        "command": reproduce_command(config, workdir),
        "note": note,
    }
    if summary.get("precision_changes"):
        # The run moved between precisions (--allow_precision_change): the command gives the
        # one it started in, these after which epoch it changed.
        record["precision_changes"] = summary["precision_changes"]
    init = summary.get("init")
    if init:
        # Training started from other weights: keep how those were made, since a shipped file
        # named by --baseline_init=shipped may be the very one this replaces.
        record["continued_from"] = init.get("record") or {"weights": init.get("weights")}
    os.makedirs(pretrained_dir, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(weights, tmp)
    write_json(record_path(target), record)
    return record


def main(argv):
    del argv
    from pn_tf.checkpoints import PRETRAINED_DIR, CheckpointError

    try:
        record = ship(FLAGS.workdir, FLAGS.pretrained_dir or PRETRAINED_DIR, FLAGS.note,
                      FLAGS.force)
    except (ShipError, CheckpointError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
