"""Latency tables: every unit of a gated network timed on the deployment runtime at a ladder of widths.

The gated network is extracted at ``levels`` uniform widths (every group keeps the fraction
``k / levels`` of its channels, k = 1..levels). Each extraction is cut into units
(:mod:`pn_tf.latency.units`: one TFLite op with what the converter fuses into it); units of
equal signature (types, configs and input shapes) are converted once. All units and the whole
extracted models are then timed batch-1, interleaved in one process (LiteRT with XNNPACK at
``num_threads``), so load changes on a shared machine hit them alike.

Per unit the table keeps its *width fraction* at each level and its time there. A unit's width
fraction is what its cost scales with: ``(c_in / C_in) (c_out / C_out)`` for an op that maps
one channel space to another (a convolution, a dense layer), ``c / C`` for one that works per
channel (BN, depthwise, addition, pooling); ``c`` is an affine function of the kept group
widths read off the :class:`~pn_tf.graph.ChannelGraph` (the same counts as the FLOPs model's).
A unit that touches no group is a constant. A unit is a row of the table by its layer names
*and* its occurrence among the units of those names: a shared layer called twice (or keras.ops
nodes of one name) gives two rows, each with one time per level.

Finally the whole models are timed at every level too: the estimate goes through them
(:class:`~pn_tf.latency.LatencyModel`: isolated units miss the cache reuse and data movement of
the whole graph, and the whole/unit ratio changes with the width). The affine fit
``scale * (sum of unit times) + offset_ms`` (:func:`fit_whole`) is kept beside them, for the
search's gradient and for comparison, with its worst error over the levels
(``fit_max_abs_pct_error``); :func:`fit_problem` flags a table whose whole-network times do
not grow with the width (timed beside other work).

Channel counts are taken in whole kernel tiles (:mod:`pn_tf.latency.tiles`, measured at the
start of the build and kept as ``channel_tiles``).

The table is plain JSON (it can be built wherever Python and LiteRT run, then passed to the
pipeline) and cached on disk under a key of the network's structure, the runtime version, the
CPU, the dtype and the thread count (:func:`cached_table`).
"""

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from pn_tf.latency import units as unit_lib
from pn_tf.latency import tiles as tile_lib
from pn_tf.latency.tiles import tiled
from pn_tf.tflite.convert import error_line

log = logging.getLogger(__name__)

# 2: channel tiles (``channel_tiles``; format-1 tables are read as untiled); 3: whole networks
# converted as exported (int8 with float input and output); 4: times are each file's fastest run
# (pn_tf.tflite.timing.fastest_ms), not its median, and attention heads count key_dim channels
# each (_channel_terms); 5: spatial convolutions' own output tile ("out_spatial", units' "spatial")
FORMAT = 5
FORMATS = (1, 2, 3, 4, 5)
LEVELS = 16
# A table whose whole-model fit misses a level by more than this (percent) is not trusted
# silently: the budget promises estimates within 10% (docs/latency_budgets.md), and a table
# that cannot fit its own levels that well cannot predict other widths better.
FIT_BAR_PCT = 10.0


class LatencyTableError(ValueError):
    """A latency table that is missing, unreadable, made for another network or runtime, or that
    cannot be built (a unit that does not convert or run, named with the reason)."""


def whole_noise_pct(table):
    """How far the whole networks' times are from growing with the width level: the largest
    distance of a level's time from the closest non-decreasing sequence, in percent."""
    whole = np.asarray(table.get("whole_ms") or [], np.float64)
    if whole.size == 0:
        return None
    monotone = np.asarray(isotonic(whole))
    return float(np.max(np.abs(whole - monotone) / np.maximum(whole, 1e-9)) * 100)


def fit_problem(table):
    """One line saying why ``table``'s estimates are not to be trusted, or None.

    The estimate goes through the whole networks timed at the table's levels
    (:class:`~pn_tf.latency.LatencyModel`), so those times must grow with the width: a level
    timed more than :data:`FIT_BAR_PCT` away from that (:func:`whole_noise_pct`: other work took
    the CPU while it ran) is flagged, as is a table without whole-network times.
    """
    error = whole_noise_pct(table)
    if error is None or not np.isfinite(error):
        return "the latency table has no whole-network times; rebuild it with tools/latency_model.py"
    if error <= FIT_BAR_PCT:
        return None
    from pn_tf.tflite.timing import BUSY_CPU_SHARE

    share = table.get("cpu_share")
    why = (f"it was timed with {share:.0%} of the CPU (other work was running): rebuild it on a "
           "quiet machine" if share is not None and share < BUSY_CPU_SHARE else
           "rebuild it on a quiet machine; if that persists, budget FLOPs")
    return (f"the latency table is unreliable: a wider network was timed {error:.1f}% faster than "
            f"the narrower ones around it (bar {FIT_BAR_PCT:g}%); {why}")


def fit_whole(sums, whole, iterations=20):
    """``(scale, offset_ms)`` of ``whole ~ scale * sums + offset_ms`` over the levels.

    Least squares on the relative errors (a narrow level counts as much as the full one),
    iteratively reweighted with Huber weights, so a level timed slow by other work on the
    machine (long invokes are interrupted more often than short units) does not bend the fit.
    ``offset_ms >= 0``: the whole graph's own per-op costs are a cost, never a credit; with a
    negative offset the fit is refitted through zero (``scale * sums``).
    """
    sums, whole = np.asarray(sums, np.float64), np.maximum(np.asarray(whole, np.float64), 1e-9)
    if len(sums) < 2 or np.ptp(sums) <= 0:
        return float(np.median(whole / np.maximum(sums, 1e-12))), 0.0

    def robust(columns):
        weights = 1.0 / whole
        for _ in range(iterations):
            beta = np.linalg.lstsq(columns * weights[:, None], whole * weights, rcond=None)[0]
            residual = (columns @ beta - whole) / whole
            spread = max(1.4826 * float(np.median(np.abs(residual))), 1e-3)
            weights = np.minimum(1.0, 1.345 * spread / np.maximum(np.abs(residual), 1e-12)) / whole
        return beta

    scale, offset = robust(np.stack([sums, np.ones_like(sums)], axis=1))
    if offset < 0 or scale <= 0:
        (scale,), offset = robust(sums[:, None]), 0.0
    return float(scale), float(offset)


def describe_unit(unit):
    """How messages name a unit: its layer calls' names and types."""
    return "unit " + " + ".join(f"'{node.operation.name}' ({type(node.operation).__name__})"
                                for node in unit)


def convert_named(make_model, path, dtype, what, whole=False, samples=None):
    """``unit_lib.convert`` of ``make_model()``, its failure a LatencyTableError naming ``what``.

    ``whole``: a whole network, converted as the pipeline exports it (int8 with float input and
    output, so its quantize and dequantize ops are timed too); a unit takes and gives int8.
    """
    try:
        return unit_lib.convert(make_model(), path, dtype, io="float32" if whole else "int8",
                                samples=samples)
    except Exception as err:  # any converter failure, named with its unit
        raise LatencyTableError(f"{what} cannot be converted to TFLite {dtype}: {error_line(err)}") from err


def cpu_name():
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_version():
    import tensorflow as tf

    return f"tensorflow {tf.__version__} (LiteRT interpreter, XNNPACK)"


def structure_key(network, graph):
    """A hash of what decides the network's latency: its layers' types and configs (names and
    trainable flags aside: a search freezes layers), its input shape and its channel groups."""
    parts = [str(tuple(network.input_shape)), str([g.size for g in graph.groups])]
    from pn_tf.layers import ChannelGate

    parts += [unit_lib.layer_signature(layer) for layer in network.layers
              if not isinstance(layer, ChannelGate)]  # gates (and their modes) are extracted away
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def kept_width(group, fraction):
    """``fraction`` of a group's channels, in whole runs of its granule, at least one run."""
    count = int(round(fraction * group.size / group.granule)) * group.granule
    return int(min(group.size, max(group.granule, count)))


def _level_widths(graph, fraction):
    return [kept_width(group, fraction) for group in graph.groups]


def _channel_terms(graph, atoms):
    """``(fixed channels, {group index: multiplicity})`` of a channel axis made of ``atoms``, in
    kernel channels: an attention layer's heads count ``key_dim`` channels each
    (:meth:`~pn_tf.graph.ChannelGraph.element_channels`). Counted one per head, the heads of a
    ViT's attention unit were 4 channels beside its 64 output channels, always one channel tile,
    so the table saw no unit time change with the heads and put the whole networks' change on
    the MLP widths (a ViT's int8 estimate: a 0.49 cut where 0.05 was measured)."""
    fixed, groups = 0, {}
    for a in atoms:
        per = graph.element_channels(a)
        group = graph.group_of_atom(a)
        if group is None:
            fixed += graph.atoms[a].size * per
        else:
            groups[group.index] = groups.get(group.index, 0) + per
    return fixed, groups


def _atoms_channels(graph, atoms, widths):
    return sum(widths[g.index] if (g := graph.group_of_atom(a)) is not None else graph.atoms[a].size
               for a in atoms)


def unit_dependence(graph, unit, recorded=None, widths=None):
    """How a unit's width fraction depends on the group widths (None: it does not).

    Returns a dict ``{"in_fixed", "in_groups", "out_fixed", "out_groups", "product"}`` (group
    indices as strings, JSON-ready): the unit's input channels are ``in_fixed + sum_g n_g w_g``,
    its output channels the same with ``out_*``; ``product`` tells whether its fraction is the
    product of the two (a map between channel spaces) or the input's alone (per channel).
    ``recorded``: ``graph.recorded()``, passed in when many units are asked about. ``widths``:
    the group widths ``unit`` was extracted at; with them, a shared layer's call is told from
    its other calls by its output channels (else its first call is taken).
    """
    recorded = graph.recorded() if recorded is None else recorded
    # keras.ops nodes of one name are told apart by the graph's labels (the same op objects)
    ops = [unit_lib.head(unit), *(node.operation for node in unit)]
    found = [op for op in ops if graph.label(op) in recorded]
    if not found:
        return None
    name = graph.label(found[0])
    _, in_atoms, out_atoms = recorded[name]
    calls = graph.calls(name)
    if len(set(calls)) > 1 and widths is not None:
        node = next((n for n in unit if n.operation is found[0]), unit[0])
        channels = node.output_tensors[0].shape[-1]
        matching = [c for c in calls if _atoms_channels(graph, c[1], widths) == channels]
        if matching:
            in_atoms, out_atoms = matching[0]
    in_fixed, in_groups = _channel_terms(graph, in_atoms)
    out_fixed, out_groups = _channel_terms(graph, out_atoms)
    if not in_groups and not out_groups:
        return None
    product = sorted(set(in_atoms)) != sorted(set(out_atoms))
    return {"in_fixed": in_fixed, "in_groups": {str(g): n for g, n in in_groups.items()},
            "out_fixed": out_fixed, "out_groups": {str(g): n for g, n in out_groups.items()},
            "product": product, "spatial": product and tile_lib.spatial(found[0])}


def width_fraction(dependence, widths, full, tiles=None):
    """The unit's width fraction at group ``widths`` (numpy; ``full``: the full widths).

    ``tiles``: the table's ``channel_tiles`` (:mod:`pn_tf.latency.tiles`): a map's input
    channels count in input tiles, its output channels (and a per-channel op's channels) in
    output tiles. None: channels count one by one.
    """
    tiles = tiles or {}

    def fraction(fixed, groups, tile, small=None):
        total = fixed + sum(n * full[int(g)] for g, n in groups.items())
        count = fixed + sum(n * widths[int(g)] for g, n in groups.items())
        return float(tiled(count, tile, total, small)) / total

    if not dependence["product"]:
        return fraction(dependence["in_fixed"], dependence["in_groups"], tiles.get("out", 1))
    out = (dict(tile=tiles["out_spatial"], small=tiles.get("out", 1))
           if dependence.get("spatial") and "out_spatial" in tiles else dict(tile=tiles.get("out", 1)))
    return (fraction(dependence["in_fixed"], dependence["in_groups"], tiles.get("in", 1))
            * fraction(dependence["out_fixed"], dependence["out_groups"], **out))


def widths_model(gated, graph, widths):
    """The plain (gate-free) network keeping the first ``widths[g]`` channels of each group."""
    from pn_tf.extract import extract_at

    keep = [np.arange(g.size) < w for g, w in zip(graph.groups, widths)]
    return extract_at(gated, keep=keep, graph=graph).model


def measure_tiles(dtype, num_threads, runs=100, progress=None):
    """``{"out": tile, "in": tile}``: the channel tiles of the runtime's convolution kernels at
    ``dtype``, from a 1x1 convolution timed at a range of output, then input, channel counts
    (:mod:`pn_tf.latency.tiles`); measured once per process, dtype and thread count."""
    tiles = dict(_measured_tiles(dtype, num_threads, runs))
    if progress:
        progress(f"latency table: {dtype} kernels work on output channels in tiles of {tiles['out']} "
                 f"({tiles['out_spatial']} above that for spatial kernels), input channels in tiles "
                 f"of {tiles['in']}")
    return tiles


@functools.lru_cache(maxsize=None)
def _measured_tiles(dtype, num_threads, runs):
    directory = tempfile.mkdtemp(prefix="pn_tf_tiles_")
    try:
        paths = [convert_named(functools.partial(tile_lib.probe_model, axis, c),
                          os.path.join(directory, f"{axis}_{c}.tflite"), dtype,
                          f"the {axis}put-channel probe with {c} channels")
                 for axis, c in tile_lib.PROBES]
        times_ms, _ = time_files(paths, num_threads, runs)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return tuple(tile_lib.tiles_from_times(times_ms).items())


def time_files(paths, num_threads, runs, warmup=5, block=5, seed=0, labels=None, image=None):
    """Batch-1 ms of each ``.tflite`` file, timed interleaved (the fastest of its runs:
    :func:`pn_tf.tflite.timing.fastest_ms`); and the CPU share.

    Inputs are random (:func:`pn_tf.latency.units.timing_interpreter`), or with ``image``
    (whole networks: one image as the network takes it) that image, as the report times
    (:func:`pn_tf.tflite.timing.batch1_interpreter`).

    A file that does not load or run raises a LatencyTableError naming it by its entry in
    ``labels`` (default: its path) with the reason.
    """
    from pn_tf.tflite.timing import batch1_interpreter, fastest_ms, time_interleaved

    rng = np.random.default_rng(seed)
    labels = labels or [os.fspath(p) for p in paths]
    interpreters = []
    for path, label in zip(paths, labels):
        try:  # each file loaded and run once alone, so a failure is named
            interpreter = (unit_lib.timing_interpreter(path, num_threads, rng) if image is None
                           else batch1_interpreter(path, num_threads, seed, image))
            interpreter.invoke()
        except Exception as err:  # any runtime failure, named with its file
            raise LatencyTableError(f"{label} cannot be run by LiteRT: {error_line(err)}") from err
        interpreters.append(interpreter)
    try:
        times, share = time_interleaved(interpreters, runs, warmup=warmup, block=block,
                                        num_threads=num_threads)
    except Exception as err:
        raise LatencyTableError(f"timing {len(paths)} TFLite models failed: {error_line(err)}") from err
    return [fastest_ms(t) for t in times], float(share)


def isotonic(values):
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators):
    a unit never gets faster with more channels in the table, whatever the timing noise."""
    blocks = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(n)]


def build_table(gated, graph=None, dtype="float32", num_threads=1, levels=LEVELS, runs=100,
                progress=None, workdir=None):
    """Times ``gated``'s units at ``levels`` uniform widths; returns the table (a dict).

    ``progress``: a callable taking one line of text (default: logging). ``workdir``: where the
    ``.tflite`` files go (default: a temporary directory, removed after).
    """
    from pn_tf.graph import ChannelGraph
    from pn_tf.graph.replay import batch_rows

    if dtype not in unit_lib.DTYPES:
        raise ValueError(f"dtype must be one of {unit_lib.DTYPES}, got {dtype!r}")
    say = progress or log.info
    graph = graph or ChannelGraph(gated)
    if not graph.groups:
        raise LatencyTableError(f"{gated.name} has no prunable channel groups: nothing to time")
    started = time.time()
    tiles = measure_tiles(dtype, num_threads, progress=say)
    full = [g.size for g in graph.groups]
    fractions = [k / levels for k in range(1, levels + 1)]
    own_dir = workdir is None
    directory = workdir or tempfile.mkdtemp(prefix="pn_tf_latency_")
    try:
        paths = [convert_named(unit_lib.overhead_model, os.path.join(directory, "overhead.tflite"),
                          "float32", "the one-op model that times the interpreter's own cost")]
        labels = ["the one-op overhead model"]
        signatures, rows, wholes = {}, {}, []
        recorded = graph.recorded()
        for level, fraction in enumerate(fractions):
            widths = _level_widths(graph, fraction)
            plain = widths_model(gated, graph, widths)
            seen, rows_per_example = {}, batch_rows(plain)
            for unit in unit_lib.split_units(plain):
                batch = rows_per_example.get(id(unit[0].input_tensors[0]), 1)
                names = unit_lib.unit_names(unit)
                # A row is a unit's names and its occurrence among the units of those names:
                # a shared layer (or keras.ops nodes of one name) is several units of a level.
                row_key = (names, seen.get(names, 0))
                seen[names] = row_key[1] + 1
                key = unit_lib.signature(unit, batch)
                if key not in signatures:
                    signatures[key] = len(paths)
                    what = f"{describe_unit(unit)} (at width level {level + 1}/{levels})"
                    paths.append(convert_named(functools.partial(unit_lib.unit_model, unit, batch), os.path.join(
                        directory, f"unit_{len(signatures)}.tflite"), dtype, what))
                    labels.append(what)
                if row_key not in rows:  # the same unit at every level: its dependence once
                    rows[row_key] = {"names": list(names), "call": row_key[1], "samples": [],
                                     "dependence": unit_dependence(graph, unit, recorded, widths)}
                rows[row_key]["samples"].append((level, widths, signatures[key]))
            wholes.append(len(paths))
            what = f"the whole {gated.name} at width level {level + 1}/{levels}"
            paths.append(convert_named(functools.partial(unit_lib.batch1_model, plain), os.path.join(
                directory, f"whole_{level}.tflite"), dtype, what, whole=True))
            labels.append(what)
            say(f"latency table: width level {level + 1}/{levels} extracted, "
                f"{len(signatures)} distinct units converted ({time.time() - started:.0f} s)")
        say(f"latency table: timing {len(paths)} models interleaved, {runs} runs each")
        times_ms, share = time_files(paths, num_threads, runs, labels=labels)
    finally:
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)
    overhead = times_ms[0]
    unit_ms = lambda index: max(0.0, times_ms[index] - overhead)  # noqa: E731
    units, constant, sums = [], 0.0, np.zeros(levels)
    for row in rows.values():
        times = [unit_ms(index) for _, _, index in row["samples"]]
        for (level, _, _), t in zip(row["samples"], times):
            sums[level] += t  # the level's whole unit sum, whatever units each level has
        if row["dependence"] is None:
            constant += float(np.mean(times))
            continue
        pairs = sorted((width_fraction(row["dependence"], w, full, tiles), t)
                       for (_, w, _), t in zip(row["samples"], times))
        xs, ts = [], []
        for x, t in pairs:  # equal fractions (a group too small to take every level): averaged
            if xs and abs(x - xs[-1]) < 1e-9:
                ts[-1].append(t)
            else:
                xs.append(x)
                ts.append([t])
        units.append({"names": row["names"], "call": row["call"], **row["dependence"], "x": xs,
                      "ms": isotonic([float(np.mean(t)) for t in ts])})
    whole = np.array([times_ms[i] - overhead for i in wholes])
    scale, offset = fit_whole(sums, whole)
    table = {
        "format": FORMAT, "network": gated.name, "input_shape": list(gated.input_shape[1:]),
        "dtype": dtype, "num_threads": int(num_threads), "runtime": runtime_version(),
        "cpu": cpu_name(), "levels": fractions, "runs": int(runs), "group_sizes": full,
        "structure": structure_key(gated, graph), "channel_tiles": tiles, "constant_ms": constant,
        "scale": float(scale), "offset_ms": float(offset), "invoke_overhead_ms": overhead,
        "whole_ms": whole.tolist(), "units_sum_ms": sums.tolist(), "cpu_share": share,
        "distinct_units": len(signatures), "seconds": time.time() - started, "units": units,
    }
    fit = scale * sums + offset
    table["fit_max_abs_pct_error"] = float(np.max(np.abs(fit - whole) / np.maximum(whole, 1e-9)) * 100)
    say(f"latency table: {len(units)} width-dependent units, constant part {constant:.3f} ms; "
        f"whole = {scale:.3f} x units + {offset:.3f} ms (max fit error "
        f"{table['fit_max_abs_pct_error']:.1f}%, CPU share {share:.2f}), {table['seconds']:.0f} s")
    problem = fit_problem(table)
    if problem:
        say(f"latency table: warning: {problem}")
    return table


def save_table(table, path):
    from pn_tf.io import write_json

    write_json(path, table)
    return path


def load_table(path):
    """A table from JSON, with one-line reasons for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise LatencyTableError(f"latency table {path} does not exist; build one with "
                                "tools/latency_model.py --output=PATH")
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError) as err:
        raise LatencyTableError(f"latency table {path} is not readable JSON ({err}); rebuild it "
                                "with tools/latency_model.py") from err
    if not isinstance(table, dict) or table.get("format") not in FORMATS or "units" not in table:
        raise LatencyTableError(f"{path} is not a pn-tf latency table (format {FORMAT}); rebuild "
                                "it with tools/latency_model.py")
    return table


def cache_dir():
    """Where tables are cached: ``$PN_TF_CACHE/latency`` or ``~/.cache/pn_tf/latency``."""
    root = os.environ.get("PN_TF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pn_tf")
    return os.path.join(root, "latency")


def cache_key(gated, graph, dtype, num_threads, levels=LEVELS, runs=100):
    text = "|".join([structure_key(gated, graph), dtype, str(num_threads), str(levels), str(runs),
                     runtime_version(), cpu_name(), f"format {FORMAT}"])
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def cached_table(gated, graph=None, dtype="float32", num_threads=1, levels=LEVELS, runs=100,
                 progress=None, rebuild=False):
    """The table from the cache, or built and cached (``rebuild``: build it anyway)."""
    from pn_tf.graph import ChannelGraph

    graph = graph or ChannelGraph(gated)
    path = os.path.join(cache_dir(), f"{cache_key(gated, graph, dtype, num_threads, levels, runs)}.json")
    if not rebuild and os.path.isfile(path):
        try:
            table = load_table(path)
            (progress or log.info)(f"latency table: cached {path}")
            return table
        except LatencyTableError as err:
            log.warning("%s; rebuilding it", err)
    table = build_table(gated, graph, dtype, num_threads, levels, runs, progress)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_table(table, path)
    except OSError as err:  # a read-only home: the run goes on, uncached
        log.warning("could not cache the latency table at %s (%s); set PN_TF_CACHE to a "
                    "writable folder to keep it", path, err)
    return table
