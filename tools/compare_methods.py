"""Runs the pipeline for several channel-selection methods and seeds from one baseline.

    python tools/compare_methods.py --methods=pn,pn_noproj,lr,dg,uniform,random,l1 --seeds=0,1 \
        --workdir=runs/compare -- --flagfile=configs/compare_resnet56.flags

Methods: pn (GRU predictor, projection on), pn_noproj (projection off), lr (linear
predictor), lr_scaled (linear predictor on inputs scaled by 1/sqrt(#gates)), dg (no
predictor: classification + FLOPs loss) search gates; uniform (same
fraction of every group), random (random channels) and l1 (global filter-L1 ranking) need
no search. Every run uses the same baseline, FLOPs target (extraction lands on it,
measured) and fine-tuning budget; the flags after ``--`` go to every run. Finished runs
are not redone (the pipeline skips finished stages), so the command resumes. Stopping the
tool (Ctrl-C, or SIGTERM from ``kill`` or a scheduler) stops the run in progress with it.

``--reuse_from=DIR --reuse_stages=baseline,search`` starts each new run from copies of those
finished stages of the same method and seed in another comparison's workdir, so a variant
that changes only later stages (``--round_to``, ``--finetune_epochs``) does not search again.

Prints a Markdown table (mean ± std over seeds): test accuracy of the extracted model
before and after fine-tuning, FLOPs removed, parameters, and the TFLite float32 batch-1
latency of each method's seed-0 fine-tuned model against the unpruned baseline, timed
side by side in this process (``--latency_runs=0`` skips it). Per-run rows go to
``<workdir>/results.jsonl`` (rows that earlier commands wrote for other methods or seeds
stay).
"""

import json
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from pn_tf.io import atomic_path  # noqa: E402
from pn_tf.pipeline import artifacts  # noqa: E402

METHODS = {
    "pn": ["--predictor=gru", "--projection=always", "--selection=gates"],
    "pn_noproj": ["--predictor=gru", "--projection=off", "--selection=gates"],
    "lr": ["--predictor=linear", "--projection=always", "--selection=gates"],
    "lr_scaled": ["--predictor=linear_scaled", "--projection=always", "--selection=gates"],
    "dg": ["--predictor=none", "--selection=gates"],
    "uniform": ["--selection=uniform"],
    "random": ["--selection=random"],
    "l1": ["--selection=l1"],
}

def define_flags():
    """The command line (defined only when run as a script, so tests can import this file)."""
    flags.DEFINE_list("methods", ["pn", "dg"], f"Methods from {', '.join(METHODS)}.")
    flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
    flags.DEFINE_string("workdir", None, "Folder for all runs.")
    flags.DEFINE_integer("latency_runs", 200, "Timed batch-1 TFLite runs per model (0: no latency).")
    flags.DEFINE_bool("json", False, "Print JSON rows instead of a Markdown table.")
    flags.DEFINE_string("reuse_from", None, "Another comparison's workdir whose finished stages new "
                        "runs start from (same method and seed).")
    flags.DEFINE_list("reuse_stages", ["baseline", "search"], "Stages copied with --reuse_from.")
    flags.mark_flag_as_required("workdir")


def _read(workdir, stage):
    with open(artifacts.summary_file(workdir, stage)) as f:
        return json.load(f)


class ReuseError(ValueError):
    """--reuse_from names runs or stages that are not there."""


def reuse_stages(source, target, stages):
    """Copies ``source``'s ``config.json`` and finished ``stages`` into a new run dir ``target``.

    Stage summaries hold paths relative to their work directory, so the copies point into
    ``target`` as they are (summaries written before 2026-12-07 hold absolute paths, which keep
    pointing into ``source``).
    """
    import shutil

    if os.path.exists(target):
        return False
    needed = [os.path.join(source, artifacts.CONFIG)] + [artifacts.summary_file(source, st) for st in stages]
    missing = [os.path.relpath(p, source) for p in needed if not os.path.isfile(p)]
    if missing:
        raise ReuseError(f"--reuse_from: {source} has no {', '.join(missing)}; finish those runs "
                         "first or drop --reuse_from")
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shutil.copyfile(os.path.join(source, artifacts.CONFIG), os.path.join(tmp, artifacts.CONFIG))
    for stage in stages:
        shutil.copytree(os.path.join(source, stage), os.path.join(tmp, stage))
    os.rename(tmp, target)
    return True


class Stopped(Exception):
    """The tool got SIGTERM; raised inside ``subprocess.run``, which then kills the run."""


def stop_children_on_sigterm():
    """Makes SIGTERM (``kill``, a job scheduler) stop the pipeline run in progress too.

    Python's default SIGTERM action ends this process at once and leaves the ``pn_tf.train``
    child running on, unseen, writing into the same run folder as the next command. Raising
    instead lets ``subprocess.run`` kill the child before the exception reaches :func:`main`.
    Ctrl-C already reaches the child (the terminal signals the whole process group).
    """
    def handler(signum, frame):
        raise Stopped()

    signal.signal(signal.SIGTERM, handler)


def run_one(method, seed, workdir, extra):
    command = [sys.executable, "-m", "pn_tf.train", *extra, *METHODS[method], f"--seed={seed}",
               f"--workdir={workdir}", "--stages=baseline,search,extract,finetune"]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    extract, finetune = _read(workdir, "extract"), _read(workdir, "finetune")
    return {"method": method, "seed": int(seed), "workdir": workdir,
            "flops_reduction": extract["flops_reduction"], "flops": extract["flops"],
            "params": extract["params"], "widths": extract["widths"],
            "test_before_finetune": extract.get("test_accuracy_before_finetune"),
            "holdout_before_finetune": extract["holdout_accuracy_before_finetune"],
            "test_after_finetune": finetune["test_accuracy"],
            "holdout_after_finetune": finetune.get("holdout_accuracy"),
            "finetuned_model": finetune["model"]}


def write_results(workdir, rows):
    """Writes ``rows`` to ``<workdir>/results.jsonl``, keeping the rows of other (method, seed)
    pairs already there (from an earlier command with other ``--methods`` or ``--seeds``)."""
    path = os.path.join(workdir, "results.jsonl")
    mine = {(r["method"], r["seed"]) for r in rows}
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            kept = [r for r in map(json.loads, filter(str.strip, f)) if (r["method"], r["seed"]) not in mine]
    with atomic_path(path) as tmp, open(tmp, "w") as out:
        out.writelines(json.dumps(r) + "\n" for r in kept + rows)


def tflite_latency(rows, workdir, runs):
    """Converts the baseline and each method's first-seed model to TFLite f32; times them."""
    import keras

    import pn_tf.layers  # noqa: F401  (custom layers)
    from pn_tf import export
    from pn_tf.checkpoints import load_checked
    from pn_tf.models import build_model
    from pn_tf.tflite.timing import measure_latency

    with open(os.path.join(rows[0]["workdir"], artifacts.CONFIG)) as f:
        config = json.load(f)
    out = os.path.join(workdir, "tflite")
    paths = {"baseline": os.path.join(out, "baseline.tflite")}
    if not os.path.exists(paths["baseline"]):
        weights = _read(rows[0]["workdir"], "baseline")["weights"]
        weights = weights and os.path.join(rows[0]["workdir"], weights)  # stored relative or absolute
        if config.get("model"):  # a user's model file: its gated network, as the export stage has it
            from pn_tf.pipeline.models import FileModel
            from pn_tf.pipeline.stages.export import deployable

            network = FileModel(config["model"], config["prune_policy"], config.get("exclude") or (),
                                config["input_size"]).build()
            if weights:
                load_checked(network, weights)
            base = deployable(network)
        else:
            from pn_tf import data as data_lib

            base = build_model(config["arch"], input_size=config["input_size"],
                               num_classes=config["num_classes"], **data_lib.normalization_kwargs(config["dataset"]))
            load_checked(base, weights)
        export.export_tflite(base, paths["baseline"])
    for row in rows:
        if row["method"] in paths:
            continue
        path = os.path.join(out, f"{row['method']}_seed{row['seed']}.tflite")
        if not os.path.exists(path):
            model = os.path.join(row["workdir"], row["finetuned_model"])  # stored relative to its run
            export.export_tflite(keras.saving.load_model(model, compile=False), path)
        paths[row["method"]] = path
    print(f"timing {len(paths)} TFLite models, {runs} batch-1 runs each, interleaved", flush=True)
    measured = measure_latency(list(paths.values()), num_threads=1, runs=runs)
    return {name: measured[path]["median_ms"] for name, path in paths.items()}


def _stat(values, scale=100.0):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values) * scale:.2f} ± {np.std(values) * scale:.2f}"


def print_table(rows, methods, latency):
    print("| method | seeds | FLOPs removed | params | test acc. before FT (%) | test acc. after FT (%) "
          "| TFLite f32 latency (ms) |")
    print("|---|---|---|---|---|---|---|")
    if latency:
        print(f"| unpruned baseline | | 0% | | | | {latency['baseline']:.3f} |")
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        ms = f"{latency[m]:.3f} ({latency[m] / latency['baseline']:.2f}x)" if latency else "n/a"
        print(f"| {m} | {len(mine)} | {np.mean([r['flops_reduction'] for r in mine]):.1%} | "
              f"{int(np.mean([r['params'] for r in mine])):,} | {_stat([r['test_before_finetune'] for r in mine])} | "
              f"{_stat([r['test_after_finetune'] for r in mine])} | {ms} |")


def main(argv):
    extra = argv[1:]
    f = flags.FLAGS
    unknown = [m for m in f.methods if m not in METHODS]
    if unknown:
        print(f"error: unknown methods {unknown}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    os.makedirs(f.workdir, exist_ok=True)
    stop_children_on_sigterm()
    try:
        return _compare(f, extra)
    except Stopped:  # between runs: copying stages with --reuse_from, or timing TFLite models
        print(f"stopped (SIGTERM) between pipeline runs; nothing is half-written (copies and "
              f"exports go through temporary names). Rerun the same command to resume: finished "
              f"runs and stages in {f.workdir} are kept", file=sys.stderr)
        return 143


def _compare(f, extra):
    """Runs every (method, seed), then times and reports; :func:`main` handles SIGTERM."""
    rows = []
    for m in f.methods:
        for s in f.seeds:
            run_dir = os.path.join(f.workdir, f"{m}_seed{s}")
            if f.reuse_from:
                try:
                    if reuse_stages(os.path.join(f.reuse_from, f"{m}_seed{s}"), run_dir, f.reuse_stages):
                        print(f"{run_dir}: starts from {', '.join(f.reuse_stages)} of "
                              f"{os.path.join(f.reuse_from, f'{m}_seed{s}')}", flush=True)
                except ReuseError as err:
                    print(f"error: {err}", file=sys.stderr)
                    return 2
            try:
                rows.append(run_one(m, s, run_dir, extra))
            except Stopped:
                print(f"stopped (SIGTERM) during the {m} run with seed {s}; that run was stopped "
                      f"too. Rerun the same command to resume: finished runs, stages and epoch "
                      f"backups in {f.workdir} are kept", file=sys.stderr)
                return 143
            except subprocess.CalledProcessError as err:
                print(f"error: the {m} run with seed {s} failed (exit status {err.returncode}; its "
                      f"message is above); fix the cause and rerun the same command: finished runs "
                      f"and stages in {f.workdir} are kept and not redone", file=sys.stderr)
                return 1
            write_results(f.workdir, rows)
    latency = tflite_latency(rows, f.workdir, f.latency_runs) if f.latency_runs > 0 else None
    if f.json:
        for row in rows:
            print(json.dumps(row))
        print(json.dumps({"tflite_f32_latency_ms": latency}))
        return 0
    print_table(rows, f.methods, latency)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
