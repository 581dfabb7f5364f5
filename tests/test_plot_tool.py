"""tools/plot_search_curves.py reads search histories and writes a PNG."""

import csv
import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

COLUMNS = ("epoch", "val_accuracy", "val_loss", "val_flops_ratio", "pn_loss")


def _history(path, accuracy):
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for epoch, acc in enumerate(accuracy):
            writer.writerow([epoch, acc, 1 - acc, 1 - 0.1 * epoch, 0.1])


def test_plot_search_curves(tmp_path):
    _history(tmp_path / "runs" / "pn_seed0" / "search" / "history.csv", [0.8, 0.7, 0.6])
    _history(tmp_path / "runs" / "pn_seed1" / "search" / "history.csv", [0.9, 0.8, 0.7, 0.65])
    out = tmp_path / "curves.png"
    done = subprocess.run([sys.executable, "tools/plot_search_curves.py", f"--workdir={tmp_path / 'runs'}",
                           "--methods=pn,dg", f"--out={out}"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(done.stdout)
    assert report["mean_over_seeds"]["pn"]["seeds"] == [0, 1]
    assert report["mean_over_seeds"]["pn"]["val_accuracy"] == [0.85, 0.75, 0.65]  # 3 common epochs
    assert "no finished search for dg" in done.stderr


def test_plot_search_curves_without_runs(tmp_path):
    done = subprocess.run([sys.executable, "tools/plot_search_curves.py", f"--workdir={tmp_path}",
                           f"--out={tmp_path / 'x.png'}"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "run tools/compare_methods.py first" in done.stderr
    assert not (tmp_path / "x.png").exists()
