"""tools/bench_pruned_latency.py end to end on ResNet-56: float32 TFLite, a few timed runs."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "bench_pruned_latency.py"

ROW_KEYS = {"arch", "input_size", "quantization", "model", "round_to", "flops", "keras_flops",
            "flops_reduction", "latency_ms", "latency_p90_ms", "latency_reduction", "efficiency",
            "meets_goal", "params", "size_bytes", "runs"}


@pytest.mark.slow  # a tool's end-to-end run (~30 s); its fit is tested below, timing in test_latency*
def test_bench_pruned_latency_resnet56(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    # --bn_images=0 and float32 only: no dataset is read (random BN statistics if no
    # shipped baseline), so the test is quick and needs no data.
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--archs=resnet56", "--runs=5", "--warmup=2",
         "--quantizations=float32", "--bn_images=0", "--json", f"--out_dir={tmp_path}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    for key in ("date", "machine", "num_threads", "target_flops_reduction", "goal_efficiency",
                "results"):
        assert key in report
    assert report["num_threads"] == 1
    (result,) = report["results"]
    assert result["arch"] == "resnet56" and result["input_size"] == 32
    rows = {row["model"]: row for row in result["rows"]}
    assert set(rows) == {"full", "pruned_r1"}
    for row in rows.values():
        assert ROW_KEYS <= set(row)
        assert row["quantization"] == "float32" and row["runs"] == 5
        assert row["latency_ms"] > 0 and row["latency_p90_ms"] >= row["latency_ms"]
        assert os.path.isfile(row["tflite"]) and row["size_bytes"] > 0
        # MACs counted from the .tflite graph equal the Keras-side exact count.
        assert row["flops"] == row["keras_flops"]
    full, pruned = rows["full"], rows["pruned_r1"]
    assert full["flops"] == 125_485_696 and full["efficiency"] is None
    assert pruned["flops"] < full["flops"]
    assert abs(pruned["flops_reduction"] - 0.5) < 0.02
    assert pruned["params"] < full["params"] and pruned["size_bytes"] < full["size_bytes"]
    assert pruned["efficiency"] is not None


def test_affine_fit_recovers_fixed_share():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from bench_pruned_latency import affine_fit, variant_name

    # latency = 0.2 ms + 4 ms/GMAC exactly: at 0.25 GMACs the full model takes 1.2 ms.
    fit = affine_fit([250e6, 125e6, 62.5e6], [1.2, 0.7, 0.45])
    assert abs(fit["fixed_ms"] - 0.2) < 1e-9 and abs(fit["ms_per_gmac"] - 4.0) < 1e-9
    assert abs(fit["fixed_share"] - 0.2 / 1.2) < 1e-9 and abs(fit["r2"] - 1.0) < 1e-12
    assert abs(fit["implied_efficiency"] - (1 - 0.2 / 1.2)) < 1e-9
    # ... which is the efficiency of every pruned point: (1 - 0.7/1.2) / 0.5.
    assert abs((1 - 0.7 / 1.2) / 0.5 - fit["implied_efficiency"]) < 1e-9
    assert affine_fit([250e6, 125e6], [1.2, 0.7]) is None
    assert variant_name(0.5, 8, [0.5]) == "pruned_r8"
    assert variant_name(0.25, 1, [0.25, 0.5]) == "pruned_t25_r1"
