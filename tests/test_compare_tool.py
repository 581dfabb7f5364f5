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
            {"weights": f"{stage}/w.weights.h5"}))  # relative to the run, as the pipeline writes
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
    assert (target / search["weights"]).read_bytes() == b"weights of search"  # the copy, untouched
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


def test_a_failed_run_ends_with_a_message_not_a_traceback(tmp_path):
    import subprocess

    workdir = tmp_path / "cmp"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "compare_methods.py"), "--methods=uniform",
         "--seeds=0", f"--workdir={workdir}", "--latency_runs=0", "--", "--arch=no_such_arch"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "error: the uniform run with seed 0 failed" in result.stderr
    assert "rerun the same command" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "results.jsonl").exists()


def test_results_keep_the_rows_of_other_commands(tmp_path):
    from compare_methods import write_results

    write_results(str(tmp_path), [{"method": "pn", "seed": 0, "acc": 1}, {"method": "dg", "seed": 0, "acc": 2}])
    write_results(str(tmp_path), [{"method": "lr", "seed": 0, "acc": 3}, {"method": "pn", "seed": 0, "acc": 4}])
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows == [{"method": "dg", "seed": 0, "acc": 2}, {"method": "lr", "seed": 0, "acc": 3},
                    {"method": "pn", "seed": 0, "acc": 4}]


_SIGTERM_DRIVER = """
import os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from absl import app
import compare_methods

pid_file, workdir, phase = sys.argv[2], sys.argv[3], sys.argv[4]

def sleeping_run(method, seed, workdir, extra):  # stands in for a long pn_tf.train child
    code = "import os, time; open(%r, 'w').write(str(os.getpid())); time.sleep(300)" % pid_file
    subprocess.run([sys.executable, "-c", code], check=True)

def sleeping_copy(source, target, stages):  # stands in for a long --reuse_from copy
    open(pid_file, "w").write(str(os.getpid()))
    time.sleep(300)

compare_methods.run_one = sleeping_run
compare_methods.reuse_stages = sleeping_copy
compare_methods.define_flags()
argv = ["compare_methods", "--methods=pn", "--seeds=0", "--workdir=" + workdir]
if phase == "copy":
    argv.append("--reuse_from=" + os.path.join(workdir, "elsewhere"))
app.run(lambda argv: sys.exit(compare_methods.main(argv)), argv=argv)
"""


@pytest.mark.parametrize("phase, message", [
    ("run", "stopped (SIGTERM) during the pn run with seed 0"),
    ("copy", "stopped (SIGTERM) between pipeline runs"),
])
def test_sigterm_stops_the_run_in_progress_too(tmp_path, phase, message):
    import os
    import signal
    import subprocess
    import time

    pid_file = tmp_path / "busy.pid"
    busy = None
    tool = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_DRIVER, str(REPO_ROOT / "tools"), str(pid_file),
         str(tmp_path / "cmp"), phase], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert tool.poll() is None and time.time() < deadline, f"the {phase} never started"
            time.sleep(0.1)
        busy = int(pid_file.read_text())
        tool.send_signal(signal.SIGTERM)
        stderr = tool.communicate(timeout=60)[1]
    finally:
        tool.kill()
        alive = (busy is not None and busy != tool.pid
                 and subprocess.run(["kill", "-0", str(busy)], capture_output=True).returncode == 0)
        if alive:  # an orphan left by a broken tool: do not leave it running
            os.kill(busy, signal.SIGKILL)
    assert not alive, "the pipeline run outlived the tool"
    assert tool.returncode == 143
    assert message in stderr
    assert "Rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
