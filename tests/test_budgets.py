"""Budgets: one class per kind; a third kind is one new class (a toy parameter budget here)."""

import types

import numpy as np
import pytest

from pn_tf.extract import extract_at, random_scores
from pn_tf.graph import ChannelGraph, FlopsModel
from pn_tf.models import build_model
from pn_tf.pipeline import PipelineError, budgets
from pn_tf.pipeline.budgets import Budget, budget_of, kind_of
from pn_tf.search import PNSearch
from pn_tf.settings import option


class KernelWeights(FlopsModel):
    """The kernels' weight count as a function of the gates: each MAC term of the FLOPs model
    divided by the output positions it is repeated over."""

    name = "kernel weights"
    unit = "weights"

    def __init__(self, graph):
        super().__init__(graph)
        for e, layer in enumerate(self.layers):
            shape = graph.operation(layer).output.shape
            self.coef[e] /= float(np.prod(shape[1:-1])) if len(shape) > 2 else 1.0
        self.term_flops = self._terms(self.widths)
        self.total = float(self.term_flops.sum())
        depends = (self.n_in.sum(1) + self.n_out.sum(1)) > 0
        self.prunable = float(self.term_flops[depends].sum())


class ParamsBudget(Budget):
    """A toy third kind: remove a fraction of the kernels' weights."""

    kind = "params"
    target = option("target_params_reduction", "float", None, "Fraction of kernel weights to remove.",
                    low=0.0, high=1.0, pins=True)

    def cost_model(self, graph):
        return KernelWeights(graph)

    @staticmethod
    def report_line(report):
        return f"Target parameter reduction {report['target_params_reduction']:.1%}."


@pytest.fixture
def params_budget():
    yield ParamsBudget
    budgets.unregister("params")


def _config(**values):
    defaults = {o.name: o.default for o in budgets.options()}
    defaults.update(round_to=1, tflite=["float32", "int8"])
    return types.SimpleNamespace(**{**defaults, **values})


def test_the_run_config_picks_its_budget():
    assert budget_of(_config()).kind == "flops" and budget_of(_config()).reduction == 0.5
    latency = budget_of(_config(target_latency_reduction=0.3))
    assert latency.kind == "latency" and latency.reduction == 0.3 and latency.timed_dtype == "float32"
    with pytest.raises(PipelineError, match="--latency_table goes with --target_latency_reduction"):
        budget_of(_config(latency_table="t.json")).check_flags()
    with pytest.raises(PipelineError, match="--p goes with --target_flops_reduction"):
        budget_of(_config(target_latency_reduction=0.3, p=0.4)).check_flags()
    with pytest.raises(PipelineError, match="must be in \\(0, 1\\), got 1.5"):
        budget_of(_config(target_flops_reduction=1.5)).check_flags()
    assert kind_of({"target_latency_reduction": 0.3}).kind == "latency"  # reports before 'budget'
    assert kind_of({"budget": "flops"}).kind == "flops"


def test_a_third_budget_kind_is_one_class(params_budget):
    """Registered by being defined; picked, checked, searched on, extracted at and reported by
    the code that serves FLOPs and latency, without a change there."""
    assert params_budget in budgets.kinds() and params_budget.target in budgets.options()
    budget = budget_of(_config(target_params_reduction=0.4))
    assert isinstance(budget, ParamsBudget)
    budget.check_flags()
    with pytest.raises(PipelineError, match="pass one budget"):
        budget_of(_config(target_params_reduction=0.4, target_latency_reduction=0.3))

    network = build_model("resnet56", input_size=32, num_classes=10, widths=[4] * 27)
    graph = ChannelGraph(network)
    cost = budget.cost_model(graph)
    assert cost.total < FlopsModel(graph).total / 50  # weights, not MACs
    # The search regularizes it (the same PNSearch step as for FLOPs and latency) ...
    search = PNSearch(network, predictor="none", target_reduction=budget.reduction, cost=cost,
                      p=budget.p(cost))
    search.compile()
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    logs = search.train_on_batch(x, np.arange(4), return_dict=True)
    assert 0 < logs["cost_ratio"] <= 1.0 + 1e-6
    # ... and extraction lands on it: the narrow model's kernels hold 60% of the weights.
    extraction = extract_at(network, budget.reduction, cost=cost, scores=random_scores(graph, seed=1),
                            images=x)
    kernels = sum(int(np.prod(w.shape)) for w in extraction.model.weights if "kernel" in w.path)
    full = sum(int(np.prod(w.shape)) for w in network.weights if "kernel" in w.path)
    assert kernels / full == pytest.approx(0.6, abs=0.01)
    assert extraction.equivalent
    fields = budget.selection_fields(extraction.selection)
    assert fields["budget"] == "params" and fields["target_params_reduction"] == 0.4
    assert kind_of(fields).report_line(fields) == "Target parameter reduction 40.0%."


def test_a_latency_table_with_a_poor_fit_is_never_used_silently(tmp_path, capsys):
    """The run says so before any stage, and the extract summary carries it to the report."""
    from pn_tf.extract import Selection
    from pn_tf.latency import build_table
    from pn_tf.pipeline.models import FileModel
    from tests.test_own_model import make_model

    network = FileModel(str(make_model(tmp_path / "tiny.keras"))).build()
    table = build_table(network, levels=2, runs=3)
    # a wider level timed slower than the next (as a table timed beside other work may come out)
    table["whole_ms"] = [table["whole_ms"][-1] * 1.4, table["whole_ms"][-1]]
    path = tmp_path / "t.json"
    from pn_tf.latency import save_table

    save_table(table, str(path))
    budget = budget_of(_config(target_latency_reduction=0.05, latency_table=str(path),
                               latency_dtype="float32", tflite_threads=1,
                               stages=["search", "extract"]))
    run = types.SimpleNamespace(workdir=str(tmp_path / "w"), is_chief=True,
                                model=types.SimpleNamespace(name="tiny"))
    budget.check(network, run)
    assert budget.fit_problem and "faster than the narrower ones" in budget.fit_problem
    assert f"[pn-tf] warning: {budget.fit_problem}" in capsys.readouterr().out
    fields = budget.selection_fields(Selection([], 1.0, 2.0, []))
    assert fields["latency_table_fit_problem"] == budget.fit_problem


def test_a_latency_report_says_when_the_measured_cut_misses_the_target():
    from pn_tf.pipeline.budgets.latency import LatencyBudget

    report = {"latency_dtype": "int8", "tflite_threads": 1, "target_latency_reduction": 0.3,
              "estimated_latency_reduction": 0.334, "latency_reduction": 0.155, "flops_reduction": 0.46,
              "latency_landing_tries": [{"aim": 0.3, "measured_reduction": 0.266},
                                        {"aim": 0.334, "measured_reduction": 0.289}],
              "measured_latency_reduction_at_extraction": 0.289,
              "not_delegated_ops": {"RELU": 48, "AVERAGE_POOL_2D": 40}}
    line = LatencyBudget.report_line(report)
    assert "misses the target by 14.5% points" in line and "measured 28.9% before fine-tuning" in line
    assert "40 AVERAGE_POOL_2D, 48 RELU" in line
    assert "misses" not in LatencyBudget.report_line(dict(report, latency_reduction=0.28))
