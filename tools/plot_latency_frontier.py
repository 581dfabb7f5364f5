"""Accuracy against measured TFLite latency for runs on a latency and on a FLOPs budget.

    python tools/plot_latency_frontier.py --runs=runs/lat40_r56_s0,runs/flops60_r56_s0,... \
        --out=docs/figures/latency_frontier_resnet56.png

Reads each run's ``report.json`` and draws its test accuracy (after fine-tuning) against its
measured latency reduction (the budgeted dtype's, baseline and pruned timed interleaved in the
run's report stage), one marker style per budget (``target_latency_reduction`` set or not),
runs of the same budget and target averaged with their seeds' range as an error bar. Prints
the plotted points as JSON.
"""

import collections
import json
import os

import numpy as np
from absl import app, flags

flags.DEFINE_list("runs", None, "Run folders (each with a report.json).")
flags.DEFINE_string("out", "latency_frontier.png", "PNG file to write.")
flags.DEFINE_string("title", "", "Plot title (default: the runs' architecture and dataset).")
flags.mark_flag_as_required("runs")
FLAGS = flags.FLAGS


def points(run_dirs):
    """``{(budget, target): {"accuracy": [...], "latency_reduction": [...], "runs": [...]}}``."""
    out = collections.defaultdict(lambda: {"accuracy": [], "latency_reduction": [], "runs": []})
    for run in run_dirs:
        with open(os.path.join(run, "report.json")) as f:
            report = json.load(f)
        latency = report.get("target_latency_reduction")
        key = ("latency", latency) if latency is not None else ("FLOPs", report["target_flops_reduction"])
        entry = out[key]
        entry["accuracy"].append(report["pruned"]["accuracy"])
        entry["latency_reduction"].append(report["latency_reduction"])
        entry["runs"].append(run)
        entry["title"] = f"{report['arch']} on {report['dataset']}"
        entry["baseline_accuracy"] = report["baseline"]["accuracy"]
    return dict(out)


def main(argv):
    del argv
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = points(FLAGS.runs)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    summary = []
    for budget, style in (("latency", dict(marker="o", color="tab:blue")),
                          ("FLOPs", dict(marker="s", color="tab:orange"))):
        keys = sorted(k for k in data if k[0] == budget)
        if not keys:
            continue
        xs = [np.mean(data[k]["latency_reduction"]) for k in keys]
        ys = [np.mean(data[k]["accuracy"]) * 100 for k in keys]
        yerr = [[y - min(data[k]["accuracy"]) * 100 for k, y in zip(keys, ys)],
                [max(data[k]["accuracy"]) * 100 - y for k, y in zip(keys, ys)]]
        ax.errorbar(xs, ys, yerr=yerr, linestyle="-", capsize=3, label=f"{budget} budget", **style)
        for k, x, y in zip(keys, xs, ys):
            ax.annotate(f"{k[1]:.2f}", (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7)
            summary.append({"budget": k[0], "target": k[1], "measured_latency_reduction": x,
                            "accuracy": y / 100, "seeds": len(data[k]["runs"]), "runs": data[k]["runs"]})
    any_entry = next(iter(data.values()))
    ax.axhline(any_entry["baseline_accuracy"] * 100, color="gray", linestyle=":", label="baseline")
    ax.set_xlabel("measured TFLite latency reduction (interleaved with the baseline)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title(FLAGS.title or any_entry["title"] + " (labels: the budget's target)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    fig.savefig(FLAGS.out, dpi=120)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
