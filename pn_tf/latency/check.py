"""How well L(a) predicts measured latency: random width configurations, timed side by side.

Each configuration draws an overall kept fraction ``f ~ U(0.2, 1)`` and gives every group
``f * U(0.75, 1.25)`` of its channels (clipped to [one channel, all]): models across the whole
latency range with unequal widths, unlike the table's uniform levels. The full network and the
configurations are extracted, converted and timed interleaved in one run; a prediction is the
estimate's ratio to the full network's times the full network's time measured in that run
(``anchored``), so a machine busier or quieter than when the table was built shifts nothing.
The unanchored errors are reported too.

With ``round_to`` (an int or ``"tile"``, as ``--round_to``) each configuration's widths are
rounded as extraction rounds them: the check then measures the configurations a pipeline run
with that rounding can select. Widths that are not multiples of the kernels' channel tile run
slower than the tile count predicts (misaligned rows and remainder loops): on ResNet50V2 at
64 px, float32, eight random configurations measured 2-14% slower than estimated (mean 7.5%),
the same configurations rounded up to multiples of 16 -3-5% (mean 3.0%; docs/latency_budgets.md).
"""

import os
import shutil
import tempfile
import time

import numpy as np

from pn_tf.latency import units as unit_lib
from pn_tf.latency.table import convert_named, kept_width, time_files, widths_model


def random_widths(graph, rng):
    """One random width configuration (see the module docstring)."""
    fraction = rng.uniform(0.2, 1.0)
    return [kept_width(group, fraction * rng.uniform(0.75, 1.25)) for group in graph.groups]


def check(gated, graph, latency, configs=20, seed=0, runs=100, progress=print, round_to=1):
    """Predicted vs measured latency of ``configs`` random configurations; a JSON-ready dict."""
    from pn_tf.extract.select import round_widths

    rng = np.random.default_rng(seed)
    started = time.time()
    full = [g.size for g in graph.groups]
    all_widths = [full] + [round_widths(random_widths(graph, rng), full, round_to) for _ in range(configs)]
    directory = tempfile.mkdtemp(prefix="pn_tf_latency_check_")
    try:
        paths = [convert_named(unit_lib.overhead_model, os.path.join(directory, "overhead.tflite"),
                          "float32", "the one-op overhead model")]
        labels = ["the one-op overhead model"]
        for index, widths in enumerate(all_widths):
            labels.append(f"the whole {gated.name} at widths {widths}" if index else
                          f"the full {gated.name}")
            paths.append(convert_named(
                lambda widths=widths: unit_lib.batch1_model(widths_model(gated, graph, widths)),
                os.path.join(directory, f"config_{index}.tflite"), latency.table["dtype"], labels[-1],
                whole=True))
            if index % 5 == 0:
                progress(f"latency check: {index + 1}/{len(all_widths)} models converted "
                         f"({time.time() - started:.0f} s)")
        progress(f"latency check: timing {len(paths)} models interleaved, {runs} runs each")
        times_ms, share = time_files(paths, latency.table["num_threads"], runs, seed=seed, labels=labels)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    measured = np.array(times_ms[1:]) - times_ms[0]
    predicted = np.array([latency.count(w) for w in all_widths])
    anchored = predicted / predicted[0] * measured[0]
    error = np.abs(anchored[1:] - measured[1:]) / measured[1:] * 100
    raw_error = np.abs(predicted[1:] - measured[1:]) / measured[1:] * 100
    ratio_error = np.abs((1 - anchored[1:] / measured[0]) - (1 - measured[1:] / measured[0]))
    affine = np.array([latency.affine_count(w) for w in all_widths])  # the table's affine fit alone
    affine_error = np.abs(affine[1:] / affine[0] * measured[0] - measured[1:]) / measured[1:] * 100
    return {
        "network": gated.name, "dtype": latency.table["dtype"],
        "num_threads": latency.table["num_threads"], "configs": configs, "runs": runs,
        "seed": seed, "round_to": round_to, "mean_abs_pct_error": float(error.mean()),
        "max_abs_pct_error": float(error.max()),
        "mean_abs_pct_error_unanchored": float(raw_error.mean()),
        "max_abs_pct_error_unanchored": float(raw_error.max()),
        "max_abs_latency_reduction_error": float(ratio_error.max()),
        "mean_abs_pct_error_affine": float(affine_error.mean()),
        "max_abs_pct_error_affine": float(affine_error.max()),
        "full_measured_ms": float(measured[0]), "full_predicted_ms": float(predicted[0]),
        "measured_ms": measured[1:].tolist(), "predicted_ms": anchored[1:].tolist(),
        "cpu_share": share, "table_cpu_share": latency.table.get("cpu_share"),
        "seconds": time.time() - started,
    }
