"""Figure-2-style curves of the gate search, from the runs of ``tools/compare_methods.py``.

    python tools/plot_search_curves.py --workdir=runs/compare_resnet56 --methods=pn,dg \
        --out=docs/figures/search_curves_resnet56.png

Reads ``<workdir>/<method>_seed<s>/search/history.csv`` (one row per search epoch, written by
the search stage's CSV logger) and draws, per method, the mean over seeds with a band of
+-1 std: the gated network's accuracy and classification loss on the evaluation split after
every epoch (the test split when the runs used ``--search_eval_split=test``, as
``configs/compare_resnet56.flags`` does; noise-free hard gates), the cost ratio (FLOPs or
latency) of those gates, and the PN predictor's training loss (epoch mean). Prints the plotted numbers as JSON.
"""

import csv
import glob
import json
import os
import re
import sys

import numpy as np
from absl import app, flags

flags.DEFINE_string("workdir", None, "Folder with <method>_seed<s> runs.")
flags.DEFINE_list("methods", ["pn", "dg"], "Methods to draw.")
flags.DEFINE_string("out", "search_curves.png", "PNG file to write.")
flags.mark_flag_as_required("workdir")

PANELS = (("val_accuracy", "accuracy of the gated network (eval split)"),
          ("val_loss", "classification loss (eval split)"),
          ("val_cost_ratio", "cost ratio of the hard gates (FLOPs or latency)"),
          ("pn_loss", "PN predictor training loss"))
LABELS = {"pn": "PN (GRU, projection)", "pn_noproj": "PN, no projection", "lr": "LR predictor",
          "dg": "DG (no predictor)"}


def read_history(path):
    """``{column: np.array}`` of one history.csv."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} has no rows")
    # Histories written before 2026-12-07 name the cost ratio after FLOPs.
    renamed = {"val_flops_ratio": "val_cost_ratio", "flops_ratio": "cost_ratio"}
    return {renamed.get(key, key): np.array([float(r[key]) for r in rows]) for key in rows[0]}


def collect(workdir, method):
    """``{column: (seeds, epochs) array}`` over the finished seeds of ``method``."""
    paths = sorted(glob.glob(os.path.join(workdir, f"{method}_seed*", "search", "history.csv")))
    histories = [read_history(p) for p in paths]
    if not histories:
        return {}, []
    epochs = min(len(h["epoch"]) for h in histories)
    seeds = [int(re.search(r"_seed(\d+)", p).group(1)) for p in paths]
    return {key: np.stack([h[key][:epochs] for h in histories]) for key in histories[0]}, seeds


def plot(curves, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (key, title) in zip(axes, PANELS):
        for method, (data, seeds) in curves.items():
            if key not in data or (key == "pn_loss" and not np.any(data[key])):
                continue
            x = data["epoch"][0] + 1
            mean, std = data[key].mean(0), data[key].std(0)
            runs = f"{len(seeds)} seed" + ("s" if len(seeds) != 1 else "")
            ax.plot(x, mean, marker="o", label=f"{LABELS.get(method, method)} ({runs})")
            ax.fill_between(x, mean - std, mean + std, alpha=0.25)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("search epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)


def main(argv):
    del argv
    f = flags.FLAGS
    curves = {}
    for method in f.methods:
        data, seeds = collect(f.workdir, method)
        if data:
            curves[method] = (data, seeds)
        else:
            print(f"warning: no finished search for {method} under {f.workdir}", file=sys.stderr)
    if not curves:
        print(f"error: no search histories under {f.workdir}; run tools/compare_methods.py first",
              file=sys.stderr)
        return 1
    plot(curves, f.out)
    summary = {m: {"seeds": s, **{k: [round(float(v), 4) for v in d[k].mean(0)] for k, _ in PANELS if k in d}}
               for m, (d, s) in curves.items()}
    print(json.dumps({"out": f.out, "mean_over_seeds": summary}, indent=1))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
