"""Latency budgets: the unit table, the estimate L(a), selection and search on it, the pipeline's checks."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pn_tf.graph import ChannelGraph
from pn_tf.latency import LatencyModel, LatencyTableError, build_table, load_table, save_table
from pn_tf.latency.table import unit_dependence
from pn_tf.latency.units import split_units
from tests.conftest import REPO_ROOT


def _gated_net():
    """Three gated convolutions, one of them between two gated spaces, and a dense head."""
    import keras

    from pn_tf.auto import insert_gates

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2D(32, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)
    return insert_gates(keras.Model(inputs, outputs, name="tiny_latency"), policy="all")


@pytest.fixture(scope="module")
def tiny():
    network = _gated_net()
    graph = ChannelGraph(network)
    table = build_table(network, graph, levels=4, runs=10)
    return network, graph, table


def test_table_times_every_unit_and_fits_the_whole_model(tiny):
    network, graph, table = tiny
    assert table["group_sizes"] == [g.size for g in graph.groups] and len(graph.groups) == 3
    assert len(table["levels"]) == 4 and len(table["whole_ms"]) == 4
    assert all(t > 0 for t in table["whole_ms"])
    # Every gated conv, the depthwise conv and the pooling and dense layers depend on a group.
    assert len(table["units"]) >= 5
    for unit in table["units"]:
        assert len(unit["x"]) == len(unit["ms"]) and unit["x"] == sorted(unit["x"])
        assert all(a <= b for a, b in zip(unit["ms"], unit["ms"][1:]))  # isotonic
    latency = LatencyModel(graph, table, network)
    # At full width every unit sits on its last knot; the whole is the full network as timed
    # (made non-decreasing over the levels).
    np.testing.assert_allclose(latency.unit_ms(), [u["ms"][-1] for u in table["units"]], rtol=1e-9)
    assert latency.total == pytest.approx(max(table["whole_ms"][-2:]) if table["whole_ms"][-1]
                                          < table["whole_ms"][-2] else table["whole_ms"][-1], rel=0.5)
    assert latency.total == pytest.approx(latency.whole_map[1][-1], rel=1e-9)
    fitted = table["scale"] * np.asarray(table["units_sum_ms"]) + table["offset_ms"]
    np.testing.assert_allclose(fitted, table["whole_ms"], rtol=0.5)  # a loose sanity bound


def test_a_conv_between_two_groups_scales_with_both(tiny):
    network, graph, _ = tiny
    from pn_tf.latency.table import widths_model

    plain = widths_model(network, graph, [g.size for g in graph.groups])
    kinds = {}
    for unit in split_units(plain):
        dependence = unit_dependence(graph, unit)
        kinds[type(unit[0].operation).__name__ + unit[0].operation.name] = dependence
    between = [d for name, d in kinds.items() if d and d["in_groups"] and d["out_groups"]
               and d["in_groups"] != d["out_groups"]]
    assert between and all(d["product"] for d in between)
    per_channel = [d for name, d in kinds.items() if name.startswith("Depthwise")]
    assert per_channel and not per_channel[0]["product"]


def test_estimate_is_differentiable_and_equals_count_at_hard_gates(tiny):
    network, graph, table = tiny
    latency = LatencyModel(graph, table, network)
    rng = np.random.default_rng(0)
    widths = [int(rng.integers(1, g.size + 1)) for g in graph.groups]
    gates = [tf.Variable(np.arange(g.size) < w, dtype=tf.float32) for g, w in zip(graph.groups, widths)]
    with tf.GradientTape() as tape:
        value = latency(gates)
    assert float(value) == pytest.approx(latency.count(widths), rel=1e-5)
    grads = tape.gradient(value, gates)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    # The gradient is the smoothed twin's: every group's channels cost something, even where
    # the measured curve is flat.
    assert all(np.all(g.numpy() > 0) for g in grads)
    assert latency.count([g.granule for g in graph.groups]) < latency.total
    # Between two knots a unit's time is interpolated linearly in its width fraction.
    unit = max(table["units"], key=lambda u: len(u["x"]))
    index = table["units"].index(unit)
    x_mid = (unit["x"][0] + unit["x"][1]) / 2
    t = latency.t0[index] + latency.s0[index] * (x_mid - latency.x0[index])
    assert t == pytest.approx((unit["ms"][0] + unit["ms"][1]) / 2, rel=1e-9, abs=1e-12)


def test_unreachable_target_names_the_largest_cut(tiny):
    network, graph, table = tiny
    latency = LatencyModel(graph, table, network)
    with pytest.raises(ValueError, match="at most"):
        latency.p_for_reduction(0.999)
    assert 0 < latency.reduction_for_p(latency.p_for_reduction(0.3)) == pytest.approx(0.3)


def test_selection_lands_on_a_latency_budget(tiny):
    from pn_tf.extract import filter_l1_scores, select_channels

    network, graph, table = tiny
    latency = LatencyModel(graph, table, network)
    target = min(0.3, latency.max_reduction() / 2)
    selection = select_channels(latency, filter_l1_scores(network, graph), target)
    assert selection.cost <= (1 - target) * latency.total
    assert selection.reduction == pytest.approx(target, abs=0.03)


def test_search_regularizes_the_latency_estimate(tiny):
    from pn_tf.search import PNSearch

    network, graph, table = tiny
    latency = LatencyModel(graph, table, network)
    search = PNSearch(network, predictor="none", target_reduction=0.3, cost=latency)
    search.compile()
    assert search.budget_ratio == pytest.approx(0.7)
    x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
    logs = search.train_on_batch(x, np.arange(4) % 10, return_dict=True)
    assert 0 < logs["cost_ratio"] <= 1.0 + 1e-6  # the latency ratio L(a_hard) / L(1)
    LatencyModel(graph, table, network)  # a search's frozen layers are the same network


def test_check_times_random_configurations_beside_the_full_network(tiny):
    from pn_tf.latency.check import check, random_widths

    network, graph, table = tiny
    rng = np.random.default_rng(0)
    for _ in range(20):
        widths = random_widths(graph, rng)
        assert all(1 <= w <= g.size for w, g in zip(widths, graph.groups))
    latency = LatencyModel(graph, table, network)
    result = check(network, graph, latency, configs=3, runs=5, progress=lambda line: None)
    assert len(result["measured_ms"]) == len(result["predicted_ms"]) == 3
    # The configurations are the seed's: each prediction is the table's count for them,
    # anchored on the full network's measured time (ratios are what a budget uses).
    rng = np.random.default_rng(0)
    widths = [random_widths(graph, rng) for _ in range(3)]
    assert result["full_predicted_ms"] == pytest.approx(latency.total, rel=1e-9)
    assert result["full_measured_ms"] > 0
    anchored = np.array([latency.count(w) for w in widths]) / latency.total * result["full_measured_ms"]
    np.testing.assert_allclose(result["predicted_ms"], anchored, rtol=1e-9)
    # Narrower than the full network everywhere, so never predicted slower than it (as fast when
    # every group stays within the same kernel tiles).
    assert all(p <= result["full_measured_ms"] * (1 + 1e-9) for p in result["predicted_ms"])
    # The errors are those of these predictions and measurements.
    predicted, measured = np.array(result["predicted_ms"]), np.array(result["measured_ms"])
    errors = np.abs(predicted - measured) / measured * 100
    assert result["mean_abs_pct_error"] == pytest.approx(errors.mean(), rel=1e-9)
    assert result["max_abs_pct_error"] == pytest.approx(errors.max(), rel=1e-9)
    assert result["max_abs_latency_reduction_error"] == pytest.approx(
        np.abs(predicted - measured).max() / result["full_measured_ms"], rel=1e-9)
    # With a rounding, the same draws rounded as extraction rounds them (here to 4 channels).
    from pn_tf.extract.select import round_widths

    rounded = check(network, graph, latency, configs=3, runs=5, progress=lambda line: None, round_to=4)
    sizes = [g.size for g in graph.groups]
    expected = [round_widths(w, sizes, 4) for w in widths]
    assert rounded["round_to"] == 4
    np.testing.assert_allclose(rounded["predicted_ms"], np.array([latency.count(w) for w in expected])
                               / latency.total * rounded["full_measured_ms"], rtol=1e-9)


def test_table_files_are_checked(tiny, tmp_path):
    network, graph, table = tiny
    path = save_table(table, str(tmp_path / "t.json"))
    assert load_table(path)["units"] == json.loads(json.dumps(table["units"]))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LatencyTableError, match="not readable JSON"):
        load_table(str(tmp_path / "bad.json"))
    with pytest.raises(LatencyTableError, match="does not exist"):
        load_table(str(tmp_path / "missing.json"))
    other = dict(table, group_sizes=[1, 2, 3])
    with pytest.raises(LatencyTableError, match="built for a network with groups"):
        LatencyModel(graph, other)


def test_pipeline_refuses_bad_latency_budgets(tiny, tmp_path, data_dir):
    import os

    from pn_tf.pipeline import Pipeline, PipelineError, RunConfig

    def validate(**overrides):
        values = dict(arch="resnet56", workdir=str(tmp_path / "w"), stages=["search", "extract"],
                      data_dir=data_dir, baseline_epochs=0, target_latency_reduction=0.3)
        values.update(overrides)
        Pipeline(RunConfig(**values), tf.distribute.get_strategy()).validate()

    for overrides, message in (
            (dict(target_latency_reduction=None, latency_table="t.json"), "goes with --target_latency"),
            (dict(target_latency_reduction=1.5), "must be in \\(0, 1\\)"),
            (dict(p=0.5), "--p goes with --target_flops_reduction"),
            (dict(latency_dtype="int8", tflite=["float32"]), "--tflite must include float32 and int8"),
            (dict(latency_table=str(tmp_path / "none.json")), "does not exist"),
            (dict(latency_table=save_table(tiny[2], str(tmp_path / "other.json"))),
             "built for a network with groups")):
        with pytest.raises(PipelineError, match=message):
            validate(**overrides)
    assert not os.path.exists(tmp_path / "w" / "search")


def test_pipeline_refuses_an_unreachable_target_and_keeps_the_table(tmp_path):
    from pn_tf.pipeline import Pipeline, PipelineError, RunConfig
    from pn_tf.pipeline.models import FileModel
    from tests.test_own_model import make_folder, make_model

    model = str(make_model(tmp_path / "tiny.keras"))
    images = str(make_folder(tmp_path / "images", per_class=12, broken=False))
    table = save_table(build_table(FileModel(model).build(), levels=3, runs=5), str(tmp_path / "t.json"))

    def validate(target, workdir, stages=("search", "extract")):
        config = RunConfig(model=model, image_dir=images, workdir=str(tmp_path / workdir),
                           stages=list(stages), search_batch_size=2, batch_size=2,
                           target_latency_reduction=target, latency_table=table)
        pipeline = Pipeline(config, tf.distribute.get_strategy())
        pipeline.validate()
        return pipeline

    with pytest.raises(PipelineError, match="cannot be reached: .* the largest reachable cut is 0"):
        validate(0.99, "w", stages=["baseline", "search", "extract", "finetune"])
    # The refusal (the last check) leaves nothing: no stage folder, no settings, no table copy.
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").iterdir())
    validate(0.2, "w")  # the refused run pinned no settings in its workdir
    pipeline = validate(0.2, "ok")
    assert (tmp_path / "ok" / "latency_table.json").exists()
    assert pipeline.cost_model(ChannelGraph(pipeline.build_network())).name == "latency"
    assert pipeline.target_reduction == 0.2


@pytest.mark.slow
def test_latency_budget_end_to_end_on_own_model(tmp_path):
    """Every stage with a latency budget: the report carries target, estimate and measurement."""
    from pn_tf.pipeline.models import FileModel
    from tests.test_own_model import TINY, make_folder, make_model

    model = str(make_model(tmp_path / "tiny.keras"))
    images = str(make_folder(tmp_path / "images", per_class=24, broken=False))
    table = save_table(build_table(FileModel(model).build(), dtype="int8", levels=4, runs=20),
                       str(tmp_path / "t.json"))
    flags = [f for f in TINY if not f.startswith("--target_flops_reduction")]
    out = subprocess.run([sys.executable, "-m", "pn_tf.train", f"--model={model}", f"--image_dir={images}",
                          f"--workdir={tmp_path / 'run'}", *flags, "--target_latency_reduction=0.3",
                          "--latency_dtype=int8", f"--latency_table={table}", "--tflite_runs=50"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["target_latency_reduction"] == 0.3 and report["latency_dtype"] == "int8"
    # The table was timed here, so extraction landed on measured cuts (pn_tf.latency.landing):
    # each try's aim, estimate and measurement are reported; the one closest to 0.3 was kept.
    tries = report["latency_landing_tries"]
    from pn_tf.latency.landing import TRIES

    assert report["latency_landing"] == "measured" and 1 <= len(tries) <= TRIES and tries[0]["aim"] == 0.3
    kept = min(tries, key=lambda t: abs(t["measured_reduction"] - 0.3))
    assert report["estimated_latency_reduction"] == pytest.approx(kept["estimated_reduction"])
    assert "timed tries" in (tmp_path / "run" / "report.md").read_text()
    assert report["pruned"]["tflite_int8_ms"] > 0 and report["baseline"]["tflite_int8_ms"] > 0
    base_ms, pruned_ms = report["baseline"]["tflite_int8_ms"], report["pruned"]["tflite_int8_ms"]
    assert report["latency_reduction"] == pytest.approx(1 - pruned_ms / base_ms, rel=1e-9)
    # The measured cut against the target. This tiny model's groups have 9-17 channels and the
    # int8 kernels work in tiles of 16 output / 8 input channels, so only a few latencies are
    # reachable at all: the landing's tries measure steps (0.05 or 0.45 on a similar small
    # model, ops_cnn, in docs/coverage_pipeline.md) and keep the closest. Before the measured
    # landing, 7 recorded runs measured 0.18-0.37; with it, 0.454 was seen once (2026-12-07,
    # the step above 0.3). 0.2 holds what was seen; it still fails a budget that did not cut (0)
    # or one cut at the FLOPs-budget scale (0.6 of the MACs went here).
    assert abs(report["latency_reduction"] - 0.3) <= 0.2, (report["latency_reduction"], tries)
    assert report["flops_reduction"] > 0
    assert (tmp_path / "run" / "latency_table.json").exists()
    assert "Target latency reduction (int8" in (tmp_path / "run" / "report.md").read_text()


def test_tool_refuses_bad_arguments():
    out = subprocess.run([sys.executable, "tools/latency_model.py", "--arch=nope"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "unknown --arch=nope" in out.stderr
    out = subprocess.run([sys.executable, "tools/latency_model.py", "--arch=resnet20", "--round_to=x"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--round_to must be a positive integer or 'tile'" in out.stderr


def test_a_layer_type_declares_its_tflite_fusion_in_its_rule():
    """A unit is what each layer type's channel rule says TFLite fuses (rules.TFLite)."""
    import keras

    from pn_tf.graph import rules

    class Halve(keras.layers.Layer):
        def call(self, x):
            return x * 0.5

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = Halve()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    # pad + conv + BN + ReLU fuse; an undeclared layer type starts a unit of its own.
    assert [len(unit) for unit in split_units(model)] == [4, 1, 1, 1]
    assert rules.tflite_for(model.layers[2]) == rules.TFLite(fusion_target=True, absorbs_pad=True)
    rules.register_rule(Halve, rules.Carry(weights=()).with_tflite(fuses_into_previous=True))
    try:
        assert [len(unit) for unit in split_units(model)] == [5, 1, 1]
    finally:
        rules.unregister_rule(Halve)


def test_timings_take_the_image_they_are_given_and_cuts_use_the_fastest_run(tmp_path):
    """The report and the measured landing time every file on one real image (an int8 network's
    time depends on its input), and compute cuts from each file's fastest run."""
    import keras

    from pn_tf.export import export_tflite
    from pn_tf.latency.table import time_files
    from pn_tf.tflite.timing import batch1_interpreter, fastest_ms, measure_latency

    x = keras.Input((8, 8, 3))
    path = export_tflite(keras.Model(x, keras.layers.Conv2D(4, 3)(x)), str(tmp_path / "m.tflite"))
    image = np.random.RandomState(3).uniform(0, 1, (1, 8, 8, 3)).astype("float32")
    interpreter = batch1_interpreter(path, image=image)
    given = interpreter.get_tensor(interpreter.get_input_details()[0]["index"])
    np.testing.assert_array_equal(given, image)
    for other in (image[0], np.concatenate([image, image + 1])):  # no batch axis; a batch
        interpreter = batch1_interpreter(path, image=other)
        np.testing.assert_array_equal(interpreter.get_tensor(interpreter.get_input_details()[0]["index"]), image)
    assert fastest_ms([0.003, 0.001, 0.002]) == 1.0
    timed = measure_latency([path], runs=5, warmup=1, block=1, image=image)[path]
    assert 0 < timed["min_ms"] <= timed["median_ms"] <= timed["p90_ms"]
    (ms,), _ = time_files([path], 1, 5, image=image)
    assert ms > 0
