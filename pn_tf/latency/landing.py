"""Landing a latency target on measured time: select by the estimate, time the result, correct.

The latency estimate L(a) (:class:`~pn_tf.latency.LatencyModel`) is a model of the network's
time; on a small network, or one whose whole time is not a smooth function of its units'
times, the cut it selects can miss the measured one by several points (a 0.3 target measured
0.19-0.40 on the coverage table's small models). Where the table was timed on this machine,
extraction therefore closes the loop: it selects channels at an *aim* (first the target),
converts the narrow model and the unpruned one to TFLite, times them interleaved, and when
the measured cut misses the target by more than ``tolerance`` it moves the aim by the miss
(or, once tries measured on both sides of the target, to the secant between them) and selects
again, at most ``tries`` times; the try measured closest to the target is kept.
Every try is reported (aim, estimated and measured cut).

Ops that XNNPACK does not take at the budget's dtype run in TFLite's own kernels, between
delegate partitions, and their time hardly follows the channel widths (a ViT in int8: its
LayerNormalization's SQUARED_DIFFERENCE / RSQRT and the attention's BATCH_MATMUL; 22
partitions, and an int8 file 2.5x slower than float32): the unpruned network's are named in a
warning and returned, so a cut that falls short says why.
"""

import os
import shutil
import tempfile
import time

from pn_tf.latency.table import LatencyTableError, cpu_name, runtime_version, time_files
from pn_tf.tflite.convert import error_line

TOLERANCE = 0.02  # measured cut within this of the target: done
TRIES = 4


def measurable_here(table):
    """Whether ``table`` was timed on this CPU and runtime (then a measured landing is
    meaningful; a table built on a phone is not timed here)."""
    return table.get("cpu") == cpu_name() and table.get("runtime") == runtime_version()


def _file(model, directory, name, dtype, what, calibration, repair_calibration):
    """``model`` converted exactly as the export stage converts it (:func:`pn_tf.export.export_tflite`:
    through a SavedModel, int8 calibrated on the same training batches with the same repair), so
    the landing times the files the report will time."""
    from pn_tf.export import export_tflite

    if dtype == "int8" and calibration is None:
        raise ValueError("a measured int8 landing needs the export's calibration batches")
    try:
        return export_tflite(model, os.path.join(directory, name), dtype,
                             calibration if dtype == "int8" else None,
                             repair_calibration=repair_calibration)
    except Exception as err:  # any converter failure, named with its model
        raise LatencyTableError(f"{what} cannot be converted to TFLite {dtype}: {error_line(err)}") from err


def _as_fine_tuned(model, dtype, calibration):
    """For int8, ``model`` with the BN statistics fine-tuning will leave it (re-estimated on the
    training images of ``calibration``; :func:`pn_tf.training.batchnorm_statistics_from`, the
    extraction itself unchanged). Extraction removes channels that feed later BN layers and
    fine-tuning re-estimates their statistics; the int8 ranges, and with them the int8 kernels'
    speed, follow (NASNetMobile: the extraction measured 0.313-0.330, the same network with
    re-estimated statistics 0.276-0.302, the fine-tuned files 0.264-0.283, in one process)."""
    import contextlib

    from pn_tf.training import batchnorm_statistics_from

    if dtype != "int8" or calibration is None:
        return contextlib.nullcontext(model)
    return batchnorm_statistics_from(model, calibration)


def _next_aim(done, target):
    """The next aim: between the closest tries measured below and above the target when there
    are both (the secant through them: measured cuts move in steps of kernel tiles, and the
    miss added to the last aim can jump back over the target), else the last aim moved by
    its miss."""
    below = [t for t in done if t["measured_reduction"] < target]
    above = [t for t in done if t["measured_reduction"] > target]
    last = done[-1]
    if not below or not above:
        return last["aim"] + (target - last["measured_reduction"])
    lo = max(below, key=lambda t: t["measured_reduction"])
    hi = min(above, key=lambda t: t["measured_reduction"])
    span = hi["measured_reduction"] - lo["measured_reduction"]
    return lo["aim"] + (target - lo["measured_reduction"]) / span * (hi["aim"] - lo["aim"])


def land(extract, target, baseline, *, dtype, num_threads, runs=100, reachable=1.0,
         tolerance=TOLERANCE, tries=TRIES, calibration=None, repair_calibration=True,
         image=None, progress=print):
    """The extraction whose measured latency cut is closest to ``target``, and the tries.

    Args:
        extract: ``aim -> Extraction`` (channels selected by the estimate at the cut ``aim``).
        target: the latency cut asked for.
        baseline: the unpruned plain network (what the cut is measured against).
        dtype, num_threads: the TFLite variant and thread count of the budget.
        runs: timed invokes per model and try.
        reachable: the largest cut the estimate allows (aims stay below it).
        calibration, repair_calibration: for int8, the export stage's calibration batches
            (training images) and repair setting: every file is converted as the export
            converts it (:func:`pn_tf.export.export_tflite`), since the quantization decides
            which ops XNNPACK takes (NASNetMobile's landing on randomly calibrated files measured
            0.296 where its exported files measured 0.196; converted from the Keras function
            instead of the SavedModel, 0.314 against 0.217: baselines 8.94 and 8.12 ms); each
            extraction with its BN statistics re-estimated on those images, as fine-tuning will
            leave them (:func:`_as_fine_tuned`).
        image: the image every file is timed on, the one the report times on (an int8
            network's time depends on its input: NASNetMobile's landing measured 0.292 on
            random N(0, 1) inputs where the report measured 0.162 on an image).

    Returns ``(extraction, tries, not_delegated)``: ``tries`` one dict per try with ``aim``,
    ``estimated_reduction``, ``measured_reduction``, ``baseline_ms`` and ``pruned_ms``;
    ``not_delegated`` the op types (and counts) of the unpruned network that XNNPACK leaves to
    TFLite's own kernels at ``dtype``.
    """
    from pn_tf.tflite.inspection import delegation

    directory = tempfile.mkdtemp(prefix="pn_tf_landing_")
    started = time.time()
    try:
        convert = dict(calibration=calibration, repair_calibration=repair_calibration)
        base = _file(baseline, directory, "baseline.tflite", dtype, "the unpruned network", **convert)
        not_delegated = delegation(base, num_threads)["not_delegated"]
        if not_delegated:
            ops = ", ".join(f"{n} {name}" for name, n in sorted(not_delegated.items()))
            progress(f"latency landing: warning: at {dtype}, XNNPACK leaves {ops} op(s) of the "
                     "network to TFLite's own kernels; their time hardly follows the channel widths, "
                     "so the measured cut may fall short of the target")
        aim, done, best = target, [], None
        for attempt in range(tries):
            extraction = extract(aim)
            with _as_fine_tuned(extraction.model, dtype, calibration):
                path = _file(extraction.model, directory, f"try_{attempt}.tflite", dtype,
                             f"the network extracted at {aim:.3f}", **convert)
            (base_ms, pruned_ms), _ = time_files([base, path], num_threads, runs, image=image,
                                                 labels=["the unpruned network", "the extraction"])
            measured = 1.0 - pruned_ms / base_ms
            done.append({"aim": float(aim), "estimated_reduction": float(extraction.selection.reduction),
                         "measured_reduction": float(measured), "baseline_ms": float(base_ms),
                         "pruned_ms": float(pruned_ms)})
            progress(f"latency landing: try {attempt + 1}/{tries} at the estimate's {aim:.3f} measured "
                     f"{measured:.3f} ({base_ms:.3f} -> {pruned_ms:.3f} ms, {dtype}; target "
                     f"{target:.3f}, {time.time() - started:.0f} s)")
            if best is None or abs(measured - target) < abs(best[1] - target):
                best = (extraction, measured)
            if abs(measured - target) <= tolerance:
                break
            next_aim = min(max(_next_aim(done, target), 0.0), reachable - 1e-3)
            if abs(next_aim - aim) < 1e-4:  # pinned at a bound: another try changes nothing
                break
            aim = next_aim
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return best[0], done, not_delegated

