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
from pn_tf.latency.table import FIT_BAR_PCT, fit_whole, widths_model
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
    assert latency.count([4, 12]) < latency.total and latency.count([8, 6]) < latency.total


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
    # A table of an earlier version with a negative offset: estimates clipped at zero, the cut
    # bounded by 100%, and the table flagged.
    legacy = dict(table, offset_ms=table["offset_ms"] - 0.9 * latency.total)
    old = LatencyModel(graph, legacy, network)
    assert old.floor() == 0.0 and old.max_reduction() <= 1.0
    assert "negative offset" in old.fit_problem


def test_a_table_that_misses_its_levels_is_flagged(shared):
    network, graph, table = shared
    assert fit_problem(dict(table, fit_max_abs_pct_error=FIT_BAR_PCT - 1, cpu_share=1.0)) is None
    busy = fit_problem(dict(table, fit_max_abs_pct_error=37.4, cpu_share=0.67))
    assert "misses a width level by 37.4% (bar 10%)" in busy and "67% of the CPU" in busy
    quiet = LatencyModel(graph, dict(table, fit_max_abs_pct_error=44.8, cpu_share=0.99), network)
    assert "44.8%" in quiet.fit_problem and "not close to an affine function" in quiet.fit_problem
    assert "no whole-model fit error" in fit_problem({})


def _failing_convert(real, layer_name):
    def convert(model, path, dtype="float32", seed=0):
        if any(layer.name == layer_name for layer in model.layers):
            raise RuntimeError(
                "<unknown>:0: error: loc('head'): 'tf.Lgamma' op is neither a custom op nor a flex op\n"
                "<unknown>:0: note: see current operation\nmore converter output")
        return real(model, path, dtype, seed)
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
