"""tools/reference_resnet56.py: the independent ResNet-56 yardstick trains the same network."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pn_tf.models import build_model
from tests.conftest import REPO_ROOT, tfds_data_dir

sys.path.insert(0, str(REPO_ROOT / "tools"))
import reference_resnet56  # noqa: E402


def _shapes(weights):
    return sorted(tuple(w.shape) for w in weights)


def test_reference_builds_pn_tfs_resnet56():
    reference = reference_resnet56.build(5e-4)
    ours = build_model("resnet56")
    gates = {id(w) for layer in ours.layers if "gate" in layer.name for w in layer.weights}
    ours_trainable = [w for w in ours.trainable_weights if id(w) not in gates]
    # Same convolutions, batch norms and classifier, weight for weight (the gates aside).
    assert _shapes(reference.trainable_weights) == _shapes(ours_trainable)
    assert reference.count_params() == sum(int(np.prod(w.shape)) for w in ours.weights
                                           if id(w) not in gates)
    # Coupled L2: one loss term per trainable array.
    assert len(reference.losses) == len(reference.trainable_weights)


@pytest.mark.slow  # a yardstick tool, not pn-tf's code path; ~60 s
def test_reference_smoke_run(tmp_path):
    out = tmp_path / "reference.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFDS_DATA_DIR=tfds_data_dir())
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "reference_resnet56.py"), "--epochs=1",
         "--take=256", f"--out={out}"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert 0.0 <= result["test_accuracy"] <= 1.0 and len(result["history"]["loss"]) == 1
    assert "test accuracy after 1 epochs" in done.stdout
