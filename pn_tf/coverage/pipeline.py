"""The whole pipeline on a coverage row: the row's model saved as a user's ``.keras``
classifier, a small generated image folder, and ``python -m pn_tf.train`` under a FLOPs
and a latency budget.

``tools/coverage.py`` checks each row's structure (groups, extraction, TFLite); this module
runs the command a user runs (baseline -> search -> extract -> finetune -> export -> report,
no batch-size flags: the sizes follow the 90-image folder) and collects what landed: the
FLOPs cut against the target, the latency cut estimated by the table and measured on the
exported files, the extraction's equivalence, which exports exist, and where a run stopped.
Each (row, budget) result is one JSON file under ``out_dir/results``, so an interrupted
sweep resumes where it stopped. ``tools/coverage_pipeline.py`` is the command line.

Importing this module does not import TensorFlow; building a row's model does.
"""

import datetime
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

COMMON_FLAGS = ("--search_epochs=1", "--finetune_epochs=1", "--tflite=float32,int8", "--tflite_runs=50",
                "--verbose=0")
FLOPS_TARGET = 0.4
LATENCY_TARGET = 0.3
BUDGETS = {
    "flops": (f"--target_flops_reduction={FLOPS_TARGET}",),
    "latency": (f"--target_latency_reduction={LATENCY_TARGET}", "--latency_dtype=int8"),
}
CLASSES = ("class_a", "class_b", "class_c")
PER_CLASS = 30
SIZE = 96
NOT_IMAGE = "not an image model"
# The inputs a row's model is built with. 1: random weights and BN statistics (biases and norm
# offsets zero, as Keras initializes them: the converter folds them away, and a fine-tuned
# pruned model then converts to more ops than its baseline: the ViT's int8 latency row measured
# no cut). 2: biases and normalization scales/offsets random too (pn_tf.coverage.check.randomize_affine).
# 3: BatchNormalization statistics those of the row's images, as training leaves them
# (pn_tf.training.set_bn_statistics): random ones made fine-tuning move them far, and the
# int8 speed with them (NASNetMobile's latency row landed 0.289 before fine-tuning, 0.155 after).
INPUTS_VERSION = 3
STATUSES = ("finished", "refused", "failed", "timeout", NOT_IMAGE)

# keras.applications rows, smallest first: parameters at 96 px, 10 classes (docs/coverage.md).
APPLICATION_PARAMS_M = {
    "MobileNetV3": 1.53, "MobileNetV2": 2.24, "MobileNet": 3.22, "EfficientNet": 4.02, "NASNetMobile": 4.24,
    "EfficientNetV2": 5.87, "DenseNet": 6.96, "Xception": 20.83, "InceptionV3": 21.79, "ResNetV2": 23.54,
    "ResNet": 23.56, "ConvNeXt": 27.83, "VGG": 50.42, "InceptionResNetV2": 54.29,
}

_STAGE = re.compile(r"^\[pn-tf\] stage (\w+): (starting|done|already finished)")


def sweep_order(names):
    """User patterns first (in the given order), then keras.applications rows smallest first."""
    patterns = [n for n in names if n not in APPLICATION_PARAMS_M]
    apps = sorted((n for n in names if n in APPLICATION_PARAMS_M), key=APPLICATION_PARAMS_M.get)
    return patterns + apps


# -- inputs --------------------------------------------------------------------------------

def build_row(name, path, size=SIZE, classes=3, seed=0):
    """Saves row ``name``'s model as a ``.keras`` classifier with ``classes`` outputs (random
    weights, biases and normalization parameters, as a trained model has them non-trivial; BN
    statistics those of the row's images, :func:`image_pixels`; :data:`INPUTS_VERSION`).
    Returns its input shape, or None (nothing saved) for a model that does not take
    ``(S, S, 3)`` images."""
    import keras
    import numpy as np

    from pn_tf.coverage.check import randomize_affine, randomize_batchnorm
    from pn_tf.coverage.models import APPLICATIONS, HUB, PATTERNS, application
    from pn_tf.training import set_bn_statistics

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    if name in APPLICATIONS:
        model = application(APPLICATIONS[name], size, classes=classes)
    else:  # a user pattern, or a keras-hub backbone with a head (the optional extra)
        build = PATTERNS[name][0] if name in PATTERNS else HUB[name][0]
        kwargs = {"size": size}
        if "classes" in inspect.signature(build).parameters:
            kwargs["classes"] = classes
        model = build(**kwargs)
    shape = tuple(model.inputs[0].shape[1:])
    if len(model.inputs) != 1 or len(shape) != 3 or shape[-1] != 3:
        return None
    randomize_batchnorm(model, seed)
    randomize_affine(model, seed)
    side = int(shape[0]) if shape[0] else size
    pixels = [image_pixels(c, i, side, seed) for c in range(len(CLASSES)) for i in range(PER_CLASS)]
    set_bn_statistics(model, [np.stack(pixels).astype("float32")])  # as pn-tf feeds them: 0..255
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model.save(path)
    return shape


def image_pixels(c, i, size=SIZE, seed=0):
    """Image ``i`` of class ``c``: random ``uint8`` pixels, the same for a seed, around the
    class's own mean colour so the classes differ a little."""
    import numpy as np

    rng = np.random.RandomState(seed * 100003 + c * 1009 + i)
    mean = np.array([60.0, 128.0, 196.0])[np.roll(np.arange(3), c)]
    return np.clip(rng.randn(size, size, 3) * 45 + mean, 0, 255).astype("uint8")


def make_images(root, size=SIZE, per_class=PER_CLASS, seed=0):
    """``len(CLASSES)`` x ``per_class`` images (:func:`image_pixels`) of ``size`` px: even files
    PNG, odd JPEG."""
    from PIL import Image

    for c, cls in enumerate(CLASSES):
        folder = os.path.join(root, cls)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(image_pixels(c, i, size, seed)).save(
                os.path.join(folder, f"{i:03d}.{ext}"), format="PNG" if ext == "png" else "JPEG", quality=90)
    return root


def command(model_path, image_dir, workdir, budget, python=sys.executable):
    return [python, "-m", "pn_tf.train", f"--model={model_path}", f"--image_dir={image_dir}",
            f"--workdir={workdir}", *COMMON_FLAGS, *BUDGETS[budget]]


# -- reading a run -------------------------------------------------------------------------

def stages_seen(stdout):
    """``(finished stages, the stage that started and did not finish or None)`` from the log."""
    done, open_stage = [], None
    for line in stdout.splitlines():
        m = _STAGE.match(line.strip())
        if not m:
            continue
        stage, what = m.groups()
        if what == "starting":
            open_stage = stage
        else:
            done.append(stage)
            if open_stage == stage:
                open_stage = None
    return done, open_stage


def last_error_line(stderr):
    """The error's last line: the pipeline's ``error: ...`` if there is one, else the last
    non-empty line of stderr that is not a TensorFlow/absl log line."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    if errors:
        return errors[-1]
    plain = [l for l in lines if not re.match(r"^(\w\d{4} |WARNING:|I0000|E0000|W0000)", l)]
    return (plain or lines or [""])[-1][:500]


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def exports_of(workdir):
    """The export stage's files that exist, as ``who_kind`` names (``pruned_tflite_int8``)."""
    summary = _read_json(os.path.join(workdir, "export", "export.json")) or {}
    found = []
    for who, kinds in summary.get("artifacts", {}).items():
        for kind, info in kinds.items():
            if os.path.exists(os.path.join(workdir, info["path"])):
                found.append(f"{who}_{kind}")
    return sorted(found)


def collect(workdir, budget, stdout, stderr, returncode, seconds, timed_out=False):
    """One run's result from its workdir and log."""
    done, open_stage = stages_seen(stdout)
    report = _read_json(os.path.join(workdir, "report.json"))
    result = {"budget": budget, "returncode": returncode, "wall_s": round(seconds, 1),
              "stages_done": done, "failed_stage": open_stage, "exports": exports_of(workdir)}
    if budget == "flops":
        result["target"] = FLOPS_TARGET
    else:
        result["target"] = LATENCY_TARGET
        result["latency_dtype"] = "int8"
    if report is not None:
        for key in ("flops_reduction", "latency_reduction", "float32_latency_reduction",
                    "estimated_latency_reduction", "equivalence_max_rel_diff", "latency_cpu_share",
                    "latency_landing_tries", "latency_statistic"):
            if report.get(key) is not None:
                result[key] = report[key]
        result["baseline_ms"] = report["baseline"].get("tflite_int8_ms", report["baseline"]["tflite_ms"])
        result["pruned_ms"] = report["pruned"].get("tflite_int8_ms", report["pruned"]["tflite_ms"])
        result["params"] = [report["baseline"]["params"], report["pruned"]["params"]]
    else:  # what the finished stages say
        extract = _read_json(os.path.join(workdir, "extract", "extract.json")) or {}
        for key in ("flops_reduction", "estimated_latency_reduction", "equivalence_max_rel_diff"):
            if key in extract:
                result[key] = extract[key]
    if timed_out:
        result["status"] = "timeout"
        result["error"] = f"killed after {seconds:.0f}s" + (f" in stage {open_stage}" if open_stage else "")
    elif returncode == 0 and report is not None:
        result["status"] = "finished"
    else:
        result["error"] = last_error_line(stderr)
        result["status"] = "refused" if not done and open_stage is None else "failed"
    return result


# -- one row, one budget ---------------------------------------------------------------------

def result_path(out_dir, row, budget):
    return os.path.join(out_dir, "results", f"{row}__{budget}.json")


def save_result(out_dir, result):
    path = result_path(out_dir, result["row"], result["budget"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def load_results(out_dir):
    """``{(row, budget): result}`` of every cached result under ``out_dir``."""
    folder = os.path.join(out_dir, "results")
    results = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if name.endswith(".json"):
            r = _read_json(os.path.join(folder, name))
            if r and "row" in r and "budget" in r:
                results[(r["row"], r["budget"])] = r
    return results


def prepare(row, out_dir, size=SIZE):
    """The row's model file and image folder under ``out_dir/inputs/row`` (made once, and again
    when they were made by an older :data:`INPUTS_VERSION`: then the row's unfinished workdirs go
    too, since a resumed run must not mix two models). Returns ``(model path, image folder)``,
    or None for a model that takes no images."""
    folder = os.path.join(out_dir, "inputs", row)
    model_path, images = os.path.join(folder, f"{row}.keras"), os.path.join(folder, "images")
    marker = os.path.join(folder, "inputs.json")
    info = _read_json(marker)
    if info is not None and info.get("version", 1) < INPUTS_VERSION:
        shutil.rmtree(folder)
        shutil.rmtree(os.path.join(out_dir, "work", row), ignore_errors=True)
        info = None
    if info is None:
        shape = build_row(row, model_path, size)
        if shape is not None:
            make_images(images, size=int(shape[0]) if shape[0] else size)
        info = {"input_shape": None if shape is None else [d for d in shape], "version": INPUTS_VERSION}
        os.makedirs(folder, exist_ok=True)
        with open(marker, "w") as f:
            json.dump(info, f)
    return None if info["input_shape"] is None else (model_path, images)


def run_one(row, budget, out_dir, timeout_s=900, size=SIZE, log=None):
    """Runs the pipeline for ``row`` under ``budget`` ("flops" or "latency") and returns its
    result (not cached here; :func:`sweep` caches). A rerun after a kill resumes the pipeline's
    finished stages in the same workdir; a workdir holding a finished run (its cached result
    removed or retried) is cleared first: that run is to be done again."""
    start = datetime.datetime.now(datetime.timezone.utc)
    out_dir = os.path.abspath(out_dir)
    inputs = prepare(row, out_dir, size)
    if inputs is None:
        return {"row": row, "budget": budget, "status": NOT_IMAGE, "started": start.isoformat(timespec="seconds")}
    workdir = os.path.join(out_dir, "work", row, budget)
    if os.path.exists(os.path.join(workdir, "report.json")):
        shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    argv = command(*inputs, workdir, budget)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    t0 = time.monotonic()
    with open(os.path.join(workdir, "stdout.log"), "w") as out, open(os.path.join(workdir, "stderr.log"), "w") as err:
        proc = subprocess.Popen(argv, cwd=repo, stdout=out, stderr=err, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except BaseException:  # the sweep itself interrupted: take the run down with it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    seconds = time.monotonic() - t0
    with open(os.path.join(workdir, "stdout.log")) as f:
        stdout = f.read()
    with open(os.path.join(workdir, "stderr.log")) as f:
        stderr = f.read()
    result = collect(workdir, budget, stdout, stderr, proc.returncode, seconds, timed_out)
    result.update(row=row, started=start.isoformat(timespec="seconds"), inputs_version=INPUTS_VERSION,
                  command=" ".join(a.replace(out_dir, "OUT") for a in argv[1:]))
    return result


def sweep(rows, budgets, out_dir, run=run_one, retry=(), progress=None, **kwargs):
    """Runs every (row, budget) without a cached result (or whose cached status is in
    ``retry``), caching each as it ends. Returns ``{(row, budget): result}``."""
    results = load_results(out_dir)
    for row in rows:
        for budget in budgets:
            cached = results.get((row, budget))
            if cached is not None and cached.get("status") not in retry:
                continue
            if progress:
                progress(f"{row} / {budget}: running")
            result = run(row, budget, out_dir, **kwargs)
            save_result(out_dir, result)
            results[(row, budget)] = result
            if progress:
                progress(f"{row} / {budget}: {summary_line(result)}")
    return results


# -- the table -------------------------------------------------------------------------------

def _pct(x):
    return "" if x is None else f"{x:.1%}"


def summary_line(r):
    if r.get("status") == NOT_IMAGE:
        return NOT_IMAGE
    parts = [r["status"]]
    if "flops_reduction" in r:
        parts.append(f"FLOPs -{r['flops_reduction']:.4f}")
    if "estimated_latency_reduction" in r:
        parts.append(f"latency est. -{r['estimated_latency_reduction']:.3f}")
    if "latency_reduction" in r:
        parts.append(f"measured -{r['latency_reduction']:.3f}")
    if r.get("error"):
        parts.append(r["error"])
    return ", ".join(parts) + (f" ({r['wall_s']:.0f}s)" if "wall_s" in r else "")


_EXPORT_KINDS = (("keras", "keras"), ("saved_model", "SavedModel"), ("tflite_float32", "float32"),
                 ("tflite_float16", "float16"), ("tflite_int8", "int8"))


def _exports_cell(r):
    pruned = {e[len("pruned_"):] for e in r.get("exports", ()) if e.startswith("pruned_")}
    names = [label for kind, label in _EXPORT_KINDS if kind in pruned]
    names += sorted(pruned - {kind for kind, _ in _EXPORT_KINDS})
    return ", ".join(names) if names else "none"


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_row(row, budget, r):
    target = FLOPS_TARGET if budget == "flops" else LATENCY_TARGET
    what = f"FLOPs {target:.0%}" if budget == "flops" else f"latency {target:.0%} (int8)"
    if r is None:
        return f"| {row} | {what} | not run | | | | | | | |"
    if r["status"] == NOT_IMAGE:
        return f"| {row} | {what} | {NOT_IMAGE} (skipped) | | | | | | | |"
    if r.get("inputs_version", 1) < INPUTS_VERSION:
        row += f" (v{r.get('inputs_version', 1)})"
    flops = f"{r['flops_reduction']:.4f}" if "flops_reduction" in r else ""
    estimated = f"{r['estimated_latency_reduction']:.3f}" if "estimated_latency_reduction" in r else ""
    measured = f"{r['latency_reduction']:.3f}" if "latency_reduction" in r else ""
    if measured and budget == "flops":
        measured += " (float32)"
    latency = f"{estimated} / {measured}" if estimated or measured else ""
    if r.get("latency_landing_tries"):  # extraction's timed tries: measured cut per try
        latency += " (landing " + ", ".join(f"{t['measured_reduction']:.3f}"
                                            for t in r["latency_landing_tries"]) + ")"
    ms = f"{r['baseline_ms']:.2f} -> {r['pruned_ms']:.2f}" if "pruned_ms" in r else ""
    equivalence = f"{r['equivalence_max_rel_diff']:.1e}" if "equivalence_max_rel_diff" in r else ""
    stopped = ""
    if r["status"] != "finished":
        where = f"stage {r['failed_stage']}: " if r.get("failed_stage") else (
            "before any stage: " if r["status"] == "refused" else "")
        stopped = _cell(where + (r.get("error") or ""))[:300]
    return (f"| {row} | {what} | {r['status']} | {flops} | {latency} | {ms} | {equivalence} | "
            f"{_exports_cell(r) if r['status'] != 'refused' else ''} | {stopped} | {r['wall_s']:.0f} s |")


def markdown(rows, budgets, results, command_line, date=None, machine=None, out_dir="OUT"):
    """The generated page: a header (command, date, machine) and one line per row x budget;
    rows without a cached result say "not run"."""
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if machine is None:
        from pn_tf.latency.table import cpu_name

        machine = f"{cpu_name()}, {os.cpu_count()} cores"
    counts = {}
    for row in rows:
        for budget in budgets:
            r = results.get((row, budget))
            key = "not run" if r is None else r["status"]
            counts[key] = counts.get(key, 0) + 1
    lines = [
        "# The pipeline on every coverage row",
        "",
        "Generated by `tools/coverage_pipeline.py`; do not edit by hand. This page was written by",
        "",
        "```bash",
        command_line,
        "```",
        "",
        f"on {date}, from the results cached under `{out_dir}` (the same command runs the rows not "
        f"cached yet; `--markdown_only` only rewrites this page). Machine: {machine}.",
        "",
        "Each row of [the coverage table](coverage.md) (keras.applications families and user "
        f"patterns at {SIZE} px, random weights and BN statistics, {len(CLASSES)} classes) saved as a "
        f"user's `.keras` classifier, with a generated folder of {len(CLASSES)} classes x {PER_CLASS} "
        "random images (PNG and JPEG), run through `python -m pn_tf.train --model=M.keras "
        "--image_dir=D " + " ".join(COMMON_FLAGS) + "` with no batch-size flags (the sizes follow "
        "the data) and one budget: `" + " ".join(BUDGETS["flops"]) + "` or `"
        + " ".join(BUDGETS["latency"]) + "` (a latency table is built at the start of that run; a "
        "target the model cannot reach is refused before any stage with its largest reachable cut). "
        "Rows whose model takes no `(S, S, 3)` images (1-D audio, video) are skipped.",
        "",
        ("Columns: *status* finished (every stage), refused (before any stage), failed (in a stage), "
         "timeout (killed after `--timeout_s`); *FLOPs cut*, the MAC reduction of the exported TFLite "
         "models (or of the extraction when the run stopped after it); *latency est. / measured*, the "
         "cut estimated by the latency table and measured on the exported int8 TFLite files at batch 1 "
         "(FLOPs rows: float32 files, measured only), with, in brackets, the cut extraction measured "
         "at each of its timed tries (`--latency_landing`, docs/latency_budgets.md); *TFLite ms*, the baseline's and the pruned "
         "model's batch-1 latency on one thread, the fastest of the runs (int8 files on latency rows, float32 on FLOPs "
         "rows); *equivalence*, the extracted model's largest output difference to the masked one, "
         "relative to the logit scale; *exports*, the pruned model's files that exist; *stopped*, the "
         "stage that did not finish and the error's last line; *wall*, the run's wall time (of its "
         "last start, where a stopped sweep resumed it). The machine was shared with other jobs while "
         "these ran, so measured latencies are noisy. Rows marked *(v1)* or *(v2)* ran on an older "
         "version of the inputs. v1: biases and normalization offsets zero and normalization scales "
         "one, as Keras initializes them (the converter folds those away, so its baseline converted "
         "to fewer ops than a trained model); its latencies and cuts are medians of the runs, which "
         "interference on the shared machine moves more than the fastest run. v2: those random, "
         "but BatchNormalization statistics random too, unlike the images' (fine-tuning moved them "
         "far, and the int8 speed with them: NASNetMobile landed 0.289 before fine-tuning, 0.155 "
         "after). Rows without a mark have BN statistics set from their images, as training leaves "
         "them (docs/latency_budgets.md)."),
        "",
        "| model | budget | status | FLOPs cut | latency est. / measured | TFLite ms | equivalence | exports | "
        "stopped | wall |",
        "|---|---|---|---:|---|---|---:|---|---|---:|",
    ]
    lines += [table_row(row, budget, results.get((row, budget))) for row in rows for budget in budgets]
    lines += ["", "Totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".", ""]
    return "\n".join(lines)


def summary_json(rows, budgets, results):
    """The cached results in one small object (no logs), for committing beside the page."""
    keep = [results[(row, b)] for row in rows for b in budgets if (row, b) in results]
    return {"rows": rows, "budgets": list(budgets), "results": keep}
