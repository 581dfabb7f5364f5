"""Runs the pipeline for several search methods and seeds from one baseline; prints a table.

    python tools/compare_methods.py --methods=pn,dg --seeds=0,1 --workdir=runs/compare -- \
        --flagfile=configs/quickstart.flags --search_epochs=10 --finetune_epochs=0

Methods: pn (GRU predictor, projection on), pn_noproj (projection off), lr (linear
predictor), dg (no predictor: classification + FLOPs loss). Every run uses the same
baseline, FLOPs target (extraction lands on it, measured) and fine-tuning budget; the
flags after ``--`` are passed to every run. The table reports the mean and std over
seeds of held-out accuracy after extraction and test accuracy after fine-tuning (with
``--finetune_epochs=0``: the extracted model as is).
"""

import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

METHODS = {
    "pn": ["--predictor=gru", "--projection=always"],
    "pn_noproj": ["--predictor=gru", "--projection=off"],
    "lr": ["--predictor=linear", "--projection=always"],
    "dg": ["--predictor=none"],
}

flags.DEFINE_list("methods", ["pn", "dg"], f"Methods from {', '.join(METHODS)}.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
flags.DEFINE_string("workdir", None, "Folder for all runs.")
flags.DEFINE_bool("json", False, "Print JSON rows instead of a Markdown table.")
flags.mark_flag_as_required("workdir")


def run_one(method, seed, workdir, extra):
    command = [sys.executable, "-m", "pn_tf.train", *extra, *METHODS[method], f"--seed={seed}",
               f"--workdir={workdir}", "--stages=baseline,search,extract,finetune"]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    read = lambda stage: json.load(open(os.path.join(workdir, stage, f"{stage}.json")))  # noqa: E731
    extract, finetune = read("extract"), read("finetune")
    return {"method": method, "seed": seed, "flops_reduction": extract["flops_reduction"],
            "params": extract["params"],
            "holdout_after_extraction": extract["holdout_accuracy_before_finetune"],
            "test_after_finetune": finetune["test_accuracy"], "widths": extract["widths"]}


def main(argv):
    extra = argv[1:]
    f = flags.FLAGS
    unknown = [m for m in f.methods if m not in METHODS]
    if unknown:
        print(f"error: unknown methods {unknown}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    rows = [run_one(m, s, os.path.join(f.workdir, f"{m}_seed{s}"), extra)
            for m in f.methods for s in f.seeds]
    if f.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print("| method | seeds | FLOPs removed | held-out acc. after extraction | test acc. after fine-tuning |")
    print("|---|---|---|---|---|")
    for m in f.methods:
        mine = [r for r in rows if r["method"] == m]
        stat = lambda k: f"{np.mean([r[k] for r in mine]):.4f} ± {np.std([r[k] for r in mine]):.4f}"  # noqa: E731
        print(f"| {m} | {len(mine)} | {np.mean([r['flops_reduction'] for r in mine]):.1%} | "
              f"{stat('holdout_after_extraction')} | {stat('test_after_finetune')} |")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
