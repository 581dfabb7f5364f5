"""Shared pytest setup: quiet TensorFlow, find the offline TFDS data directory."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pn_tf  # noqa: E402,F401 -- before any TensorFlow import: pn-tf's defaults (oneDNN on)
import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = REPO_ROOT.parent / "shared" / "tensorflow_datasets"


def tfds_data_dir():
    """TFDS_DATA_DIR if set, else ../shared/tensorflow_datasets beside the repo."""
    return os.environ.get("TFDS_DATA_DIR") or str(SHARED_TFDS)


@pytest.fixture(scope="session")
def data_dir():
    path = tfds_data_dir()
    if not os.path.isdir(os.path.join(path, "cifar10")):
        pytest.skip(f"no cifar10 under {path}; set TFDS_DATA_DIR")
    return path
