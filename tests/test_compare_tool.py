"""tools/compare_methods.py: variants reuse finished stages of another comparison."""

import json
import sys

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
from compare_methods import ReuseError, reuse_stages  # noqa: E402


def _finished_run(root):
    run = root / "pn_seed0"
    for stage in ("baseline", "search", "extract"):
        (run / stage).mkdir(parents=True)
        (run / stage / f"{stage}.json").write_text(json.dumps(
            {"weights": str(run / stage / "w.weights.h5")}))
        (run / stage / "w.weights.h5").write_bytes(b"weights of " + stage.encode())
    (run / "config.json").write_text(json.dumps({"arch": "resnet56"}))
    return run


def test_reuse_copies_the_named_stages_and_points_them_at_the_new_run(tmp_path):
    source = _finished_run(tmp_path / "a")
    target = tmp_path / "b" / "pn_seed0"
    target.parent.mkdir()
    assert reuse_stages(str(source), str(target), ["baseline", "search"])
    assert sorted(p.name for p in target.iterdir()) == ["baseline", "config.json", "search"]
    search = json.loads((target / "search" / "search.json").read_text())
    assert search["weights"] == str(target / "search" / "w.weights.h5")
    assert (target / "search" / "w.weights.h5").read_bytes() == b"weights of search"
    assert not (tmp_path / "b" / "pn_seed0.partial").exists()
    # A run that exists already is left alone (the comparison resumes it).
    assert not reuse_stages(str(source), str(target), ["baseline", "search", "extract"])
    assert not (target / "extract").exists()


def test_reuse_names_what_is_missing(tmp_path):
    source = _finished_run(tmp_path / "a")
    (source / "search" / "search.json").unlink()
    with pytest.raises(ReuseError, match="search/search.json"):
        reuse_stages(str(source), str(tmp_path / "b"), ["baseline", "search"])
    assert not (tmp_path / "b").exists()
