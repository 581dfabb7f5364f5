"""Names of the files a run writes in its work directory, defined once.

``<workdir>/<stage>/<stage>.json`` marks a finished stage (written last, atomically);
the other names are the files the stages hand to each other and to the user.
"""

import os

CONFIG = "config.json"
BASELINE_WEIGHTS = "baseline.weights.h5"
SEARCHED_WEIGHTS = "searched.weights.h5"
PRUNED_MODEL = "pruned.keras"
FINETUNED_MODEL = "finetuned.keras"
LABELS = "labels.txt"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LATENCY_TABLE = "latency_table.json"  # in the workdir: the table a latency budget was searched on


def summary_file(workdir, stage):
    """The marker of a finished stage: ``<workdir>/<stage>/<stage>.json``."""
    return os.path.join(workdir, stage, f"{stage}.json")


def read_labels(tflite_path):
    """Class names from the ``labels.txt`` beside an exported ``.tflite`` file, or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(tflite_path)), LABELS)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def write_labels(directory, class_names):
    """Writes ``labels.txt`` (one class name per line, label k on line k) atomically."""
    from pn_tf.io import atomic_path

    path = os.path.join(directory, LABELS)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in class_names))
    return path
