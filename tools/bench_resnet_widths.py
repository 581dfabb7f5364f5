"""Which shapes make a CIFAR ResNet-56 faster in TFLite: inner widths vs residual streams.

    python tools/bench_resnet_widths.py --runs=400 --json

Builds ResNet-56 at several (stream widths, inner-width fraction) shapes with the zoo
builder (``resnet_cifar(stage_widths=..., widths=...)``), converts each to TFLite float32
(``--quantization``), and times them interleaved at batch 1 in this one process
(:func:`pn_tf.tflite.timing.measure_latency`). Prints, per shape, MACs counted from the
``.tflite`` graph, the latency ratio against the unpruned network and
``efficiency = latency reduction / FLOPs reduction`` (the deployment goal is >= 0.9).
Weights are the initial ones (latency does not depend on their values).

PN's ResNet-56 groups are the blocks' inner widths; the residual streams are tied to the
option-A shortcut's zero-padding channels and stay at 16/32/64. This benchmark answers
whether pruning the streams too would buy latency that inner-width pruning cannot.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pn_tf  # noqa: E402,F401 -- first, so TensorFlow starts with pn-tf's defaults (oneDNN on)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_integer("runs", 300, "Timed batch-1 invocations per model.")
flags.DEFINE_enum("quantization", "float32", ["float32", "float16"], "TFLite variant.")
flags.DEFINE_bool("json", False, "Print JSON instead of a table.")

# name: (stream widths per stage, fraction of the stream width kept inside each block)
SHAPES = {
    "unpruned": ((16, 32, 64), 1.0),
    "inner 1/2 (16/32/64 streams, 8/16/32 inner)": ((16, 32, 64), 0.5),
    "streams 16/24/48, inner 3/4": ((16, 24, 48), 0.75),
    "streams and inner x0.71 (11/23/45)": ((11, 23, 45), 0.71),
    "streams 8/16/32, inner = stream": ((8, 16, 32), 1.0),
}


def build(stage_widths, fraction):
    from pn_tf.models.resnet_cifar import resnet_cifar, resnet_cifar_group_widths

    inner = [max(1, int(round(w * fraction))) for w in resnet_cifar_group_widths(56, stage_widths)]
    return resnet_cifar(56, widths=inner, stage_widths=stage_widths)


def main(argv):
    del argv
    from pn_tf import export
    from pn_tf.extract import extract_model
    from pn_tf.graph import FlopsModel
    from pn_tf.tflite.inspection import tflite_macs
    from pn_tf.tflite.timing import measure_latency

    f = flags.FLAGS
    with tempfile.TemporaryDirectory(prefix="pn_tf_widths_") as tmp:
        paths = {}
        for i, (name, (streams, fraction)) in enumerate(SHAPES.items()):
            model = build(streams, fraction)
            keep = [np.ones(int(w), dtype=bool) for w in FlopsModel(model).widths]
            plain = extract_model(model, keep)  # the same network, gates stripped
            paths[name] = export.export_tflite(plain, os.path.join(tmp, f"shape{i}.tflite"), f.quantization)
        latency = measure_latency(list(paths.values()), runs=f.runs)
        base_ms = latency[paths["unpruned"]]["median_ms"]
        base_macs = tflite_macs(paths["unpruned"])
        rows = []
        for name, path in paths.items():
            ms, macs = latency[path]["median_ms"], tflite_macs(path)
            flops_red, lat_red = 1 - macs / base_macs, 1 - ms / base_ms
            rows.append({"shape": name, "macs": macs, "median_ms": round(ms, 4),
                         "flops_ratio": round(macs / base_macs, 4), "latency_ratio": round(ms / base_ms, 4),
                         "efficiency": round(lat_red / flops_red, 3) if flops_red > 0 else None})
    if f.json:
        print(json.dumps({"quantization": f.quantization, "runs": f.runs, "rows": rows}, indent=1))
        return 0
    print("| shape | MMACs | FLOPs ratio | median ms | latency ratio | efficiency |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['macs'] / 1e6:.2f} | {r['flops_ratio']:.3f} | {r['median_ms']:.3f} | "
              f"{r['latency_ratio']:.3f} | {r['efficiency'] if r['efficiency'] is not None else '-'} |")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
