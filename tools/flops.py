"""Prints the multiply-accumulate count of a zoo architecture, per layer or as JSON.

    python tools/flops.py --arch=resnet56
    python tools/flops.py --arch=mobilenetv2 --input_size=224 --json

FLOPs are MACs (as the papers count them); ``p`` is the supplement's regularizer
bound for removing 50% of FLOPs, ``p = 0.5 * T_all / T_total`` with T_total counted
exactly (each conv once, however many gates touch it).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from pn_tf.graph import FlopsModel, count_params  # noqa: E402
from pn_tf.models import ARCHITECTURES, build_model  # noqa: E402

FLAGS = flags.DEFINE_string("arch", None, f"Architecture: {', '.join(sorted(ARCHITECTURES))}.")
flags.DEFINE_integer("input_size", None, "Square input side (default: the architecture's).")
flags.DEFINE_integer("num_classes", None, "Classifier size (default: the architecture's).")
flags.DEFINE_bool("json", False, "Print one JSON object instead of the per-layer table.")
flags.mark_flag_as_required("arch")


def summarize(arch, input_size=None, num_classes=None):
    model = build_model(arch, input_size=input_size, num_classes=num_classes)
    flops = FlopsModel(model)
    summary = {
        "arch": arch,
        "input_size": int(model.input.shape[1]),
        "num_classes": int(model.output.shape[-1]),
        "flops": int(round(flops.total)),
        "params": count_params(model),
        "prunable_flops": int(round(flops.prunable)),
        "p": round(0.5 * flops.total / flops.prunable, 4),
        "groups": len(flops.graph.groups),
        "group_widths": [g.size for g in flops.graph.groups],
    }
    return summary, flops


def main(argv):
    del argv
    f = flags.FLAGS
    try:
        summary, flops = summarize(f.arch, f.input_size, f.num_classes)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if f.json:
        print(json.dumps(summary))
        return 0
    print(f"{'layer':<40} {'kind':<10} {'MACs':>14} {'share':>7}")
    for layer, kind, macs in flops.table():
        print(f"{layer:<40} {kind:<10} {macs:>14,.0f} {macs / flops.total:>7.2%}")
    print(f"\n{summary['arch']} @ {summary['input_size']}px: {flops.total / 1e6:,.2f}M MACs, "
          f"{summary['params'] / 1e6:.3f}M params, {len(flops.graph.groups)} gated groups, "
          f"prunable {flops.prunable / 1e6:,.2f}M ({flops.prunable / flops.total:.1%}), "
          f"p(50%) = {summary['p']}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
