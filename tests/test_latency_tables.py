"""Latency tables of any network: shared layers, units that fail by name, and fits that are checked."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pn_tf.graph import ChannelGraph
from pn_tf.latency import LatencyModel, LatencyTableError, build_table, fit_problem
from pn_tf.latency import units as unit_lib
from pn_tf.latency.table import fit_whole, widths_model
from tests.conftest import REPO_ROOT


def _shared_pool_net():
    """One MaxPooling2D layer called twice, on two different gated spaces (8 and 12 channels).

    The smallest network where two units of one width level have the same layer names: the
    pattern that crashed tables of ResNet50V2, DenseNet121 and NASNetMobile, whose gate
    leftovers were one layer called at several places of a residual stream.
    """
    import keras

    from pn_tf.auto import insert_gates

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    pool = keras.layers.MaxPooling2D(2, name="shared_pool")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inputs)
    x = pool(x)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv_b")(x)
    x = pool(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return insert_gates(keras.Model(inputs, outputs, name="shared_pool_net"), policy="all")


@pytest.fixture(scope="module")
def shared():
    network = _shared_pool_net()
    graph = ChannelGraph(network)
    return network, graph, build_table(network, graph, levels=4, runs=5)


def test_a_shared_layer_is_one_row_per_call_with_its_own_channels(shared):
    network, graph, table = shared
    assert [g.size for g in graph.groups] == [8, 12]
    plain = widths_model(network, graph, [4, 6])
    names = [unit_lib.unit_names(u) for u in unit_lib.split_units(plain)]
    assert names.count(("shared_pool",)) == 2  # what made one row collect two samples per level
    pools = [u for u in table["units"] if u["names"] == ["shared_pool"]]
    assert [u["call"] for u in pools] == [0, 1]
    # Each call scales with the space it pools: the first call with group 0, the second with group 1.
    assert [u["in_groups"] for u in pools] == [{"0": 1}, {"1": 1}]
    for unit in table["units"]:  # one time per level (equal fractions averaged), no more
        assert 1 <= len(unit["x"]) == len(unit["ms"]) <= 4
    assert len(table["units_sum_ms"]) == len(table["whole_ms"]) == 4
    assert all(s > 0 for s in table["units_sum_ms"])
    latency = LatencyModel(graph, table, network)
    assert latency.count([1, 1]) < latency.total
    assert latency.count([4, 12]) <= latency.total and latency.count([8, 6]) <= latency.total
    # Counted channel by channel (no kernel tiles), narrower is never dearer in either group and
    # cheaper in both (this network runs in ~5 microseconds: timing noise at 5 runs can make
    # two levels of one unit equal, so a cut in one group alone may estimate no faster).
    untiled = LatencyModel(graph, dict(table, channel_tiles={}), network)
    assert untiled.count([4, 12]) <= untiled.total and untiled.count([8, 6]) <= untiled.total
    assert untiled.count([2, 3]) < untiled.total


def test_the_whole_model_fit_ignores_a_slow_level_and_never_credits_an_offset():
    sums = np.linspace(0.1, 6.9, 16)
    whole = 1.2 * sums + 0.05
    noisy = whole.copy()
    noisy[12] *= 1.4  # one level timed while other work ran
    scale, offset = fit_whole(sums, noisy)
    assert scale == pytest.approx(1.2, rel=0.02) and offset == pytest.approx(0.05, abs=0.01)
    assert np.polyfit(sums, noisy, 1)[0] > 1.25  # plain least squares bends towards the slow level
    # Whole times growing faster than the unit sum (a table of ResNet50V2 at 64 px timed beside
    # other work: 1.02x the unit sum at 1/16 of the widths, 1.3x at full width) give least
    # squares a negative offset, which put the narrowest networks below zero ms and printed cuts
    # above 100%; the fit goes through zero instead.
    convex = sums * np.linspace(1.02, 1.3, 16)
    assert np.polyfit(sums, convex, 1)[1] < 0
    scale, offset = fit_whole(sums, convex)
    assert offset == 0.0 and scale > 1.0
    assert fit_whole([1.0], [1.5]) == (1.5, 0.0)


def test_estimates_stay_positive_and_cuts_below_100_percent(shared):
    network, graph, table = shared
    assert table["offset_ms"] >= 0 and table["scale"] > 0
    latency = LatencyModel(graph, table, network)
    assert 0 < latency.floor() < latency.total and 0 < latency.max_reduction() < 1
    # A table of an earlier version with a negative offset: the estimate goes through the whole
    # networks' times, so the offset no longer matters.
    legacy = dict(table, offset_ms=table["offset_ms"] - 0.9 * latency.total)
    old = LatencyModel(graph, legacy, network)
    assert old.floor() == pytest.approx(latency.floor()) and old.max_reduction() < 1.0


def test_a_table_whose_whole_times_do_not_grow_is_flagged(shared):
    network, graph, table = shared
    steady = list(np.linspace(1.0, 4.0, len(table["levels"])))
    assert fit_problem(dict(table, whole_ms=steady, cpu_share=1.0)) is None
    slow = list(steady)
    slow[1] = steady[2] * 1.6  # one level timed while other work ran
    busy = fit_problem(dict(table, whole_ms=slow, cpu_share=0.67))
    assert "faster than the narrower ones" in busy and "(bar 10%)" in busy and "67% of the CPU" in busy
    quiet = LatencyModel(graph, dict(table, whole_ms=slow, cpu_share=0.99), network)
    assert "rebuild it on a quiet machine" in quiet.fit_problem
    assert "no whole-network times" in fit_problem({})


def _failing_convert(real, layer_name):
    def convert(model, path, dtype="float32", seed=0, **kwargs):
        if any(layer.name == layer_name for layer in model.layers):
            raise RuntimeError(
                "<unknown>:0: error: loc('head'): 'tf.Lgamma' op is neither a custom op nor a flex op\n"
                "<unknown>:0: note: see current operation\nmore converter output")
        return real(model, path, dtype, seed, **kwargs)
    return convert


def test_a_unit_that_does_not_convert_is_named(monkeypatch):
    network = _shared_pool_net()
    monkeypatch.setattr(unit_lib, "convert", _failing_convert(unit_lib.convert, "head"))
    with pytest.raises(LatencyTableError) as info:
        build_table(network, levels=2, runs=2)
    message = str(info.value)
    assert "unit 'head' (Dense)" in message and "'tf.Lgamma' op is neither" in message
    assert "level 1/2" in message and "\n" not in message and "more converter output" not in message


def test_a_unit_that_does_not_run_is_named(monkeypatch):
    network = _shared_pool_net()
    real = unit_lib.timing_interpreter

    def interpreter(path, num_threads, rng):
        if path.endswith("unit_2.tflite"):
            raise ValueError(f"{path!r} is not a valid TFLite model: broken")
        return real(path, num_threads, rng)

    monkeypatch.setattr(unit_lib, "timing_interpreter", interpreter)
    with pytest.raises(LatencyTableError, match=r"unit '.+' \(.+\) \(at width level 1/2\) cannot be "
                                                r"run by LiteRT: ValueError: .*broken"):
        build_table(network, levels=2, runs=2)


def test_tool_names_the_failing_unit_in_one_line_and_exits_2(tmp_path):
    model = tmp_path / "net.keras"
    model_script = textwrap.dedent(f"""
        import keras
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        keras.Model(inputs, keras.layers.Dense(3, name="head")(x)).save({str(model)!r})
    """)
    run_tool = textwrap.dedent(f"""
        import runpy, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import pn_tf.latency.units as unit_lib
        from tests.test_latency_tables import _failing_convert
        unit_lib.convert = _failing_convert(unit_lib.convert, "head")
        sys.argv = ["latency_model.py", "--model={model}", "--levels=2", "--runs=2"]
        runpy.run_path({str(REPO_ROOT / "tools" / "latency_model.py")!r}, run_name="__main__")
    """)
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PN_TF_CACHE": str(tmp_path / "cache")}
    env = {**os.environ, **env}
    subprocess.run([sys.executable, "-c", model_script], check=True, env=env, cwd=REPO_ROOT)
    done = subprocess.run([sys.executable, "-c", run_tool], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unit 'head' (Dense)" in errors[0] and "tf.Lgamma" in errors[0]


def test_the_estimate_goes_through_the_whole_networks_timed_at_each_level(shared):
    """L at a uniform level is the whole network timed there (not the affine fit of the unit
    sum, which misses networks whose whole/unit ratio changes with width: Xception, 1.2 -> 2.4);
    between levels it follows the unit sum; beyond them it is proportional to it."""
    from pn_tf.latency.table import kept_width

    network, graph, table = shared
    # A whole/unit ratio that steps from 1.0 to 2.0 halfway up the levels.
    whole = [s * (1.0 if k < 2 else 2.0) for k, s in enumerate(table["units_sum_ms"])]
    stepped = dict(table, whole_ms=whole)
    latency = LatencyModel(graph, stepped, network)
    sums, timed = latency.whole_map
    for fraction, w in zip(table["levels"], timed):
        widths = [kept_width(g, fraction) for g in graph.groups]
        assert latency.count(widths) == pytest.approx(w, rel=1e-9)
    assert list(timed) == sorted(timed)
    assert latency.total == pytest.approx(timed[-1], rel=1e-9)
    middle = (sums[1] + sums[2]) / 2
    assert latency.whole(middle) == pytest.approx((timed[1] + timed[2]) / 2, rel=1e-9)
    assert latency.whole(sums[0] / 2) == pytest.approx(timed[0] / 2, rel=1e-9)
    # The search's tensor L(a) has the same value at a level, and a gradient.
    import tensorflow as tf

    widths = [kept_width(g, table["levels"][1]) for g in graph.groups]
    gates = [tf.Variable((np.arange(g.size) < w).astype("float32")) for g, w in zip(graph.groups, widths)]
    with tf.GradientTape() as tape:
        value = latency(gates)
    assert float(value) == pytest.approx(latency.count(widths), rel=1e-5)
    assert all(float(tf.reduce_sum(g)) > 0 for g in tape.gradient(value, gates))
    # The affine fit stays available for comparison (tools/latency_model.py --check reports both).
    assert latency.affine_count() == pytest.approx(
        table["scale"] * (table["constant_ms"] + latency.unit_ms().sum()) + table["offset_ms"])


def test_a_measured_landing_corrects_the_aim_by_the_measured_miss(shared, monkeypatch):
    """Extraction at the estimate, timed against the unpruned network; a miss beyond the
    tolerance moves the aim by the miss; the try measured closest to the target is kept."""
    from pn_tf.extract import extract_at
    from pn_tf.latency import landing

    network, graph, _ = shared
    baseline = widths_model(network, graph, [g.size for g in graph.groups])
    misses = iter([0.06, -0.03, 0.01])  # the measured cut: the aim minus these
    aims = []

    def extract(aim):  # selected on the FLOPs (the landing only needs an aim -> extraction map)
        aims.append(aim)
        return extract_at(network, aim, graph=graph)

    def time_files(paths, num_threads, runs, labels=None, image=None):
        return [1.0, 1.0 - (aims[-1] - next(misses))], 1.0

    monkeypatch.setattr(landing, "time_files", time_files)
    lines = []
    chosen, tries, not_delegated = landing.land(extract, 0.15, baseline, dtype="float32", num_threads=1,
                                                runs=5, progress=lines.append)
    assert not_delegated == {}  # convolutions, pooling and dense: all XNNPACK's
    # 0.09 below the target, 0.24 above: the third aim is the secant between them (0.174), and
    # its 0.164 is within the 0.02 tolerance
    assert [round(a, 6) for a in aims] == [0.15, 0.21, 0.174]
    assert [round(t["measured_reduction"], 6) for t in tries] == [0.09, 0.24, 0.164]
    assert chosen.selection.reduction == pytest.approx(tries[2]["estimated_reduction"])
    assert len(lines) == 3 and "try 3/4 at the estimate's 0.174 measured 0.164" in lines[2]
    # A first try within the tolerance is the only one.
    misses = iter([0.01])
    aims.clear()
    _, tries, _ = landing.land(extract, 0.15, baseline, dtype="float32", num_threads=1, runs=5,
                               progress=lines.append)
    assert len(tries) == 1 and aims == [0.15]
    table = shared[2]
    assert landing.measurable_here(table) and not landing.measurable_here(dict(table, cpu="a phone"))


def test_an_int8_landing_times_extractions_with_the_statistics_fine_tuning_leaves(monkeypatch):
    """Fine-tuning re-estimates the BN statistics of the pruned network and an int8 network's
    speed follows the ranges they set: each int8 try is converted with its statistics
    re-estimated on the calibration images, the baseline as it is, and the extraction that is
    kept is unchanged (a float32 landing converts every network as it is)."""
    import keras

    from pn_tf.auto import insert_gates
    from pn_tf.extract import extract_at
    from pn_tf.latency import landing
    from pn_tf.tflite import inspection
    from pn_tf.training import batchnorm_statistics_from

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn_a")(keras.layers.Conv2D(8, 3, name="conv_a")(inputs)))
    x = keras.layers.BatchNormalization(name="bn_b")(keras.layers.Conv2D(8, 3, name="conv_b")(x))
    network = insert_gates(keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))))
    graph = ChannelGraph(network)
    baseline = widths_model(network, graph, [g.size for g in graph.groups])
    batches = [np.random.default_rng(k).uniform(0, 255, (8, 12, 12, 3)).astype("float32") for k in range(2)]

    def means(model):
        return [np.array(layer.moving_mean) for layer in model._flatten_layers()
                if isinstance(layer, keras.layers.BatchNormalization)]

    kept, converted = [], []

    def extract(aim):
        extraction = extract_at(network, aim, graph=graph)
        kept.append((extraction, means(extraction.model)))
        return extraction

    def convert(model, directory, name, dtype, what, calibration, repair_calibration):
        converted.append(means(model))
        return name

    monkeypatch.setattr(landing, "_file", convert)
    monkeypatch.setattr(landing, "time_files", lambda paths, *args, **kwargs: ([1.0, 0.7], 1.0))
    monkeypatch.setattr(inspection, "delegation", lambda path, threads: {"not_delegated": {}})
    landing.land(extract, 0.3, baseline, dtype="int8", num_threads=1, runs=5, calibration=batches,
                 progress=lambda line: None)
    (extraction, before), = kept
    base, timed = converted
    assert all(np.array_equal(a, b) for a, b in zip(base, means(baseline)))
    assert all(np.array_equal(a, b) for a, b in zip(means(extraction.model), before))  # kept as it was
    assert not any(np.allclose(a, b) for a, b in zip(timed, before))
    with batchnorm_statistics_from(extraction.model, batches):
        refreshed = means(extraction.model)
    assert all(np.allclose(a, b) for a, b in zip(timed, refreshed))
    assert all(np.array_equal(a, b) for a, b in zip(means(extraction.model), before))
    kept.clear(), converted.clear()
    landing.land(extract, 0.3, baseline, dtype="float32", num_threads=1, runs=5, calibration=batches,
                 progress=lambda line: None)
    assert all(np.array_equal(a, b) for a, b in zip(converted[1], kept[0][1]))


def test_kernel_tiles_are_read_off_step_shaped_times():
    from pn_tf.latency.tiles import PROBE_CHANNELS, fit_tile, tiled

    channels = np.array(PROBE_CHANNELS)
    rng = np.random.default_rng(0)
    for tile in (1, 8, 16, 32):
        times = 0.002 + 0.003 * np.ceil(channels / tile) * (1 + 0.01 * rng.standard_normal(len(channels)))
        assert fit_tile(channels, times) == tile
    # what XNNPACK measured here: float32 1x1 convolutions, output channels 4..68 (in ms)
    steps = np.where(channels <= 16, 0.0052, np.where(channels <= 32, 0.0098,
                     np.where(channels <= 48, 0.0143, np.where(channels <= 64, 0.0197, 0.0233))))
    assert fit_tile(channels, steps) == 16
    assert list(tiled(np.array([1, 16, 17, 40]), 16, 40)) == [16, 16, 32, 40]
    assert tiled(5, 1, 8) == 5


def test_spatial_convolutions_have_their_own_output_tile():
    """Measured here (float32, 16x16x64 input): a 3x3 convolution costs the same for 40 as for 64
    output channels and for 72 as for 96, 44.7 us for 8 or 16 and 88-90 for 24 or 32; 1x1
    convolutions step every 16. ResNet50V2's random widths ran 1-12% slower than the 1x1 tile
    said, every one."""
    import keras

    from pn_tf.latency.table import unit_dependence, width_fraction
    from pn_tf.latency.tiles import PROBE_CHANNELS, PROBE_WIDE, PROBES, tiled, tiles_from_times
    from pn_tf.latency.units import split_units

    wide = np.array(PROBE_WIDE)
    one = np.array(PROBE_CHANNELS) / 16
    times = np.concatenate([0.005 * np.ceil(one), 0.005 + 0.0 * one, 0.045 * np.ceil(wide / 32)])
    assert len(times) == len(PROBES)
    assert tiles_from_times(times)["out_spatial"] == 32 and tiles_from_times(times)["out"] == 16
    # above one spatial tile, 32s; up to it, the 1x1 tile's 16s
    assert list(tiled(np.array([8, 24, 40, 72]), 32, 96, small=16)) == [16, 32, 64, 96]
    from pn_tf.auto import insert_gates

    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(64, 3, padding="same", name="spatial")(x)
    gated = insert_gates(keras.Model(x, keras.layers.Conv2D(10, 1, name="pointwise")(y)))
    graph = ChannelGraph(gated)
    plain = widths_model(gated, graph, [g.size for g in graph.groups])
    units = {unit_lib.unit_names(u)[0]: u for u in split_units(plain)}
    assert unit_dependence(graph, units["spatial"])["spatial"] is True
    assert unit_dependence(graph, units["pointwise"])["spatial"] is False
    tiles = {"in": 1, "out": 16, "out_spatial": 32}
    dependence = unit_dependence(graph, units["spatial"])
    assert width_fraction(dependence, [40], [64], tiles) == 1.0  # 40 costs what 64 does
    assert width_fraction(dependence, [24], [64], tiles) == 0.5
    assert width_fraction(dependence, [12], [64], tiles) == 0.25
