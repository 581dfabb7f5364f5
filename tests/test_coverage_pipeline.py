"""The pipeline on coverage rows (pn_tf/coverage/pipeline.py, tools/coverage_pipeline.py): the
log and workdir reading, the per-(row, budget) cache and the generated page on fake results
(fast, no TensorFlow), and one small user-pattern row through both budgets (slow)."""

import json
import os

import pytest

from pn_tf.coverage import pipeline

LOG = "\n".join([
    "[pn-tf] own model, stages baseline,search,extract,finetune,export,report, workdir W",
    "[pn-tf] stage baseline: already finished (W/baseline/baseline.json)",
    "[pn-tf] stage search: starting", "[pn-tf] stage search: done in 12s",
    "[pn-tf] stage extract: starting", "[pn-tf] stage extract: done in 3s",
    "[pn-tf] stage finetune: starting", ""])


def _fake(row, budget, status, **fields):
    result = {"row": row, "budget": budget, "status": status, "wall_s": 61.0, "exports": [],
              "failed_stage": None, "inputs_version": pipeline.INPUTS_VERSION}
    result.update(fields)
    return result


def test_log_reading_names_the_stage_that_did_not_finish():
    assert pipeline.stages_seen(LOG) == (["baseline", "search", "extract"], "finetune")
    assert pipeline.stages_seen(LOG + "[pn-tf] stage finetune: done in 9s\n") == (
        ["baseline", "search", "extract", "finetune"], None)
    stderr = "W0000 00:00:1 log line\nerror: --target_latency_reduction=0.3 cannot be reached: the " \
             "largest reachable cut is 0.214\nI0000 00:00:2 other\n"
    assert pipeline.last_error_line(stderr).endswith("largest reachable cut is 0.214")
    assert pipeline.last_error_line("Traceback\n  File x\nValueError: bad\n") == "ValueError: bad"


def test_collect_reads_report_exports_and_refusals(tmp_path):
    work = tmp_path / "w"
    (work / "export").mkdir(parents=True)
    (work / "export" / "pruned_int8.tflite").write_bytes(b"x")
    (work / "export" / "export.json").write_text(json.dumps({"artifacts": {
        "pruned": {"tflite_int8": {"path": "export/pruned_int8.tflite"},
                   "tflite_float32": {"path": "export/missing.tflite"}}}}))
    (work / "report.json").write_text(json.dumps({
        "flops_reduction": 0.401, "latency_reduction": 0.28, "estimated_latency_reduction": 0.3,
        "equivalence_max_rel_diff": 2e-7, "baseline": {"tflite_ms": 2.0, "tflite_int8_ms": 1.0, "params": 10},
        "pruned": {"tflite_ms": 1.5, "tflite_int8_ms": 0.72, "params": 6}}))
    done = LOG + "[pn-tf] stage finetune: done in 9s\n"
    r = pipeline.collect(str(work), "latency", done, "", 0, 75.0)
    assert r["status"] == "finished" and r["exports"] == ["pruned_tflite_int8"]
    assert (r["latency_reduction"], r["pruned_ms"], r["target"]) == (0.28, 0.72, 0.3)
    refused = pipeline.collect(str(tmp_path / "none"), "latency", "[pn-tf] latency table: timing\n",
                               "error: ... the largest reachable cut is 0.214\n", 2, 30.0)
    assert refused["status"] == "refused" and "largest reachable cut" in refused["error"]
    failed = pipeline.collect(str(tmp_path / "none"), "flops", LOG, "Traceback\nKeyError: 'x'\n", 1, 30.0)
    assert (failed["status"], failed["failed_stage"], failed["error"]) == ("failed", "finetune", "KeyError: 'x'")
    killed = pipeline.collect(str(tmp_path / "none"), "flops", LOG, "", -9, 900.0, timed_out=True)
    assert killed["status"] == "timeout" and "in stage finetune" in killed["error"]


def test_sweep_caches_each_result_and_resumes(tmp_path):
    calls = []

    def run(row, budget, out_dir):
        calls.append((row, budget))
        if row == "kws_conv1d":
            return {"row": row, "budget": budget, "status": pipeline.NOT_IMAGE}
        if (row, budget) == ("unet", "latency"):
            raise KeyboardInterrupt  # the sweep killed during a run: nothing cached for it
        return _fake(row, budget, "finished", flops_reduction=0.4012)

    rows = ["sequential_cnn", "kws_conv1d", "unet"]
    with pytest.raises(KeyboardInterrupt):
        pipeline.sweep(rows, ["flops", "latency"], str(tmp_path), run=run)
    assert len(calls) == 6 and len(os.listdir(tmp_path / "results")) == 5
    calls.clear()
    results = pipeline.sweep(rows, ["flops", "latency"], str(tmp_path), run=lambda *a: run(*a[:2], None)
                             if a[:2] != ("unet", "latency") else _fake("unet", "latency", "timeout"))
    assert calls == [] and results[("unet", "latency")]["status"] == "timeout"  # only the missing one ran
    retried = pipeline.sweep(rows, ["flops", "latency"], str(tmp_path), retry=("timeout",),
                             run=lambda row, budget, out_dir: calls.append((row, budget)) or
                             _fake(row, budget, "finished"))
    assert calls == [("unet", "latency")] and retried[("unet", "latency")]["status"] == "finished"
    assert pipeline.load_results(str(tmp_path))[("unet", "latency")]["status"] == "finished"


def test_markdown_says_what_did_not_run():
    results = {
        ("sequential_cnn", "flops"): _fake("sequential_cnn", "flops", "finished", flops_reduction=0.4014,
                                           latency_reduction=0.35, equivalence_max_rel_diff=2.3e-7,
                                           exports=["pruned_keras", "pruned_tflite_int8", "baseline_keras"]),
        ("sequential_cnn", "latency"): _fake("sequential_cnn", "latency", "refused", error="error: ... the "
                                             "largest reachable cut is 0.214"),
        ("kws_conv1d", "flops"): {"row": "kws_conv1d", "budget": "flops", "status": pipeline.NOT_IMAGE},
        ("MobileNet", "flops"): _fake("MobileNet", "flops", "failed", failed_stage="search",
                                      error="ValueError: x | y"),
    }
    rows = pipeline.sweep_order(["MobileNet", "sequential_cnn", "kws_conv1d"])
    assert rows == ["sequential_cnn", "kws_conv1d", "MobileNet"]
    page = pipeline.markdown(rows, ["flops", "latency"], results, "python tools/coverage_pipeline.py",
                             date="2026-12-07 11:05 UTC", machine="a CPU")
    lines = page.splitlines()
    assert "python tools/coverage_pipeline.py" in lines and "Machine: a CPU." in page
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    assert len(table) == 6
    assert table[0].startswith("| sequential_cnn | FLOPs 40% | finished | 0.4014 | ") and \
        "keras, int8" in table[0] and "2.3e-07" in table[0]
    assert "before any stage: error: ... the largest reachable cut is 0.214" in table[1]
    assert "not an image model" in table[2] and "| not run |" in table[3]
    assert "stage search: ValueError: x \\| y" in table[4] and "| not run |" in table[5]
    assert "Totals: failed 1, finished 1, not an image model 1, not run 2, refused 1." in page
    summary = pipeline.summary_json(rows, ["flops", "latency"], results)
    assert len(summary["results"]) == 4


@pytest.mark.slow
def test_small_user_pattern_through_both_budgets(tmp_path):
    """sequential_cnn (0.09M params) as a user's .keras file with 3 x 30 generated images.

    FLOPs: every stage, landing within 0.01 of 0.4. Latency (int8): extraction lands on
    measured cuts (pn_tf.latency.landing), so the exported files' measured cut is within the
    issue's 0.05 of 0.3 (0.308 in the sweep of 2026-12-07), or the target is refused before any
    stage with the largest reachable cut."""
    row = "sequential_cnn"
    flops = pipeline.run_one(row, "flops", str(tmp_path), timeout_s=1500)
    assert flops["status"] == "finished", flops
    assert flops["stages_done"] == ["baseline", "search", "extract", "finetune", "export", "report"]
    assert abs(flops["flops_reduction"] - 0.4) <= 0.01
    assert "pruned_tflite_int8" in flops["exports"] and flops["equivalence_max_rel_diff"] < 1e-4
    latency = pipeline.run_one(row, "latency", str(tmp_path), timeout_s=1500)
    if latency["status"] == "refused":
        assert "largest reachable cut" in latency["error"] and latency["stages_done"] == [], latency
    else:
        assert latency["status"] == "finished", latency
        assert abs(latency["latency_reduction"] - 0.3) <= 0.05, latency
        assert latency["latency_landing_tries"], latency
        assert "estimated_latency_reduction" in latency


def test_a_latency_row_shows_extractions_measured_tries():
    tries = [{"aim": 0.3, "estimated_reduction": 0.3, "measured_reduction": 0.21},
             {"aim": 0.39, "estimated_reduction": 0.39, "measured_reduction": 0.296}]
    result = _fake("MobileNet", "latency", "finished", flops_reduction=0.47, latency_reduction=0.302,
                   estimated_latency_reduction=0.39, latency_landing_tries=tries)
    line = pipeline.table_row("MobileNet", "latency", result)
    assert "| 0.390 / 0.302 (landing 0.210, 0.296) |" in line


def test_rows_are_built_with_trained_like_biases_and_old_inputs_are_rebuilt(tmp_path):
    """Keras initializes biases to zero and the converter folds an addition of zeros away: an
    untrained row converts to fewer ops than it does after fine-tuning (the ViT's int8 latency
    row measured no cut). Inputs of an older version are rebuilt, with the row's unfinished
    workdirs, and results that ran on them are marked in the page."""
    import keras
    import numpy as np

    folder = tmp_path / "inputs" / "sequential_cnn"
    folder.mkdir(parents=True)
    (folder / "inputs.json").write_text(json.dumps({"input_shape": [96, 96, 3]}))  # version 1
    stale = tmp_path / "work" / "sequential_cnn" / "latency"
    stale.mkdir(parents=True)
    model_path, images = pipeline.prepare("sequential_cnn", str(tmp_path))
    assert json.loads((folder / "inputs.json").read_text())["version"] == pipeline.INPUTS_VERSION
    assert not stale.exists() and os.listdir(images)
    model = keras.saving.load_model(model_path, compile=False)
    biases = [v for layer in model._flatten_layers(include_self=False)
              for v in layer._trainable_variables if v.name in ("bias", "beta")]
    assert biases and all(np.any(np.asarray(v) != 0) for v in biases)
    old = _fake("vit", "latency", "finished", flops_reduction=0.43)
    del old["inputs_version"]  # results of version-1 inputs do not say so
    assert pipeline.table_row("vit", "latency", old).startswith("| vit (v1) |")
    new = _fake("vit", "latency", "finished", flops_reduction=0.43)
    assert pipeline.table_row("vit", "latency", new).startswith("| vit |")
    older = _fake("vit", "latency", "finished", flops_reduction=0.43, inputs_version=2)
    assert pipeline.table_row("vit", "latency", older).startswith("| vit (v2) |")


def test_batchnorm_statistics_are_those_of_the_images_as_training_leaves_them():
    """Random BN statistics unlike the data's made fine-tuning move them far, and the int8
    speed with them (inputs version 3): each BN layer, nested ones too, gets the moments of
    what it sees on the images, so in inference its output has the mean beta and scale gamma."""
    import keras
    import numpy as np

    from pn_tf.coverage.check import randomize_affine, randomize_batchnorm
    from pn_tf.training import set_bn_statistics

    inner_in = keras.Input((8, 8, 6))
    inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="bn_inner")(
        keras.layers.Conv2D(5, 3, name="conv_inner")(inner_in)), name="inner")
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.BatchNormalization(name="bn_outer")(keras.layers.Conv2D(6, 3, name="conv_outer")(inputs))
    model = keras.Model(inputs, inner(x))
    randomize_affine(randomize_batchnorm(model))
    pixels = np.random.default_rng(0).uniform(0, 255, (40, 10, 10, 3)).astype("float32")
    set_bn_statistics(model, [pixels])  # what pipeline.build_row does
    outer = keras.Model(inputs, x)(pixels, training=False)
    out = model(pixels, training=False)
    for bn, y in ((model.get_layer("bn_outer"), outer), (inner.get_layer("bn_inner"), out)):
        assert bn.momentum == 0.99
        y = np.asarray(y).reshape(-1, y.shape[-1])
        np.testing.assert_allclose(y.mean(0), np.asarray(bn.beta), atol=1e-3)
        np.testing.assert_allclose(y.std(0), np.abs(np.asarray(bn.gamma)), rtol=1e-2)
