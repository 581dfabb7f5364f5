"""The latency budget (``--target_latency_reduction``): remove a fraction of the measured TFLite
batch-1 latency, estimated during the search and extraction by L(a) from a latency table
(:mod:`pn_tf.latency`) and measured on the exported files by the report. docs/latency_budgets.md."""

import os

from pn_tf.pipeline import artifacts
from pn_tf.pipeline.budgets.base import Budget
from pn_tf.pipeline.errors import PipelineError
from pn_tf.settings import option


# The exported models' measured cut this far from the target is called a miss in the report
# (the pipeline's promise; extraction lands within pn_tf.latency.landing.TOLERANCE when it can).
REPORTED_MISS = 0.05


class LatencyBudget(Budget):
    kind = "latency"
    target = option(
        "target_latency_reduction", "float", None, "Fraction of the TFLite batch-1 latency to remove "
        "instead of a FLOPs count: the search regularizes and extraction selects on the latency "
        "estimate L(a) of a measured latency table (--latency_table); the report measures the "
        "result. See docs/latency_budgets.md.", low=0.0, high=1.0, pins=True)
    options = (
        option("latency_dtype", "enum", "float32", "With --target_latency_reduction: the TFLite "
               "model whose latency is budgeted and measured (int8 needs int8 in --tflite).",
               ("float32", "int8")),
        option("latency_landing", "enum", "auto", "With --target_latency_reduction: how "
               "extraction lands on the target. measured: select by the estimate, convert and time "
               "the narrow model against the unpruned one here, and correct the selection until the "
               "measured cut is within 0.02 of the target (at most 4 tries); estimate: the latency "
               "table's estimate alone; auto: measured when the table was timed on this CPU and "
               "runtime, else estimate.", ("auto", "measured", "estimate")),
        option("latency_table", "string", "", "With --target_latency_reduction: a table from "
               "tools/latency_model.py --output (built on the deployment device); default: built "
               "here at the start of the run (LiteRT, XNNPACK, --tflite_threads), cached, and "
               "copied into the workdir."),
    )

    def __init__(self, config):
        super().__init__(config)
        self.table = None  # loaded by check()
        self.fit_problem = None  # why the table's estimates are not to be trusted, if they are not

    def check_flags(self):
        super().check_flags()
        c = self.config
        if c.latency_dtype not in c.tflite or "float32" not in c.tflite:
            raise PipelineError(f"--latency_dtype={c.latency_dtype} is measured on the exported TFLite "
                                f"files: --tflite must include float32 and {c.latency_dtype} (got "
                                f"--tflite={','.join(c.tflite)})")
        if c.latency_table and not os.path.isfile(c.latency_table):
            raise PipelineError(f"--latency_table={c.latency_table} does not exist; build one with "
                                "tools/latency_model.py --output=PATH, or leave the flag out to build "
                                "it here")

    def check(self, network, run):
        """Loads the table (``--latency_table``, else the workdir's copy from an earlier start of
        this run, else built here and cached), refuses a target it cannot reach, and keeps a copy
        in the workdir. Only the search and extraction need the table: a run of other stages
        neither builds nor checks one."""
        from pn_tf.extract.select import min_widths
        from pn_tf.graph import ChannelGraph
        from pn_tf.latency import LatencyModel, LatencyTableError, cached_table, load_table, save_table

        c = self.config
        if not {"search", "extract"} & set(c.stages):
            return
        graph = ChannelGraph(network)
        copy = os.path.join(run.workdir, artifacts.LATENCY_TABLE)
        try:
            if c.latency_table:
                table = load_table(c.latency_table)
            elif os.path.exists(copy):
                table = load_table(copy)
            else:
                print(f"[pn-tf] latency table: timing the units of {run.model.name} at {c.latency_dtype}, "
                      f"{c.tflite_threads} thread(s) (cached for later runs)", flush=True)
                table = cached_table(network, graph, c.latency_dtype, c.tflite_threads,
                                     progress=lambda line: print(f"[pn-tf] {line}", flush=True))
            wanted = {"dtype": c.latency_dtype, "num_threads": c.tflite_threads}
            got = {k: table.get(k) for k in wanted}
            if got != wanted:
                raise LatencyTableError(f"the latency table was built for {got}, this run measures "
                                        f"{wanted} (--latency_dtype, --tflite_threads); build a table "
                                        "for those")
            latency = LatencyModel(graph, table, network)
        except LatencyTableError as err:
            raise PipelineError(f"--latency_table: {err}") from err
        reachable = latency.max_reduction(min_widths(latency.widths, c.round_to))
        if self.reduction >= reachable:
            rounding = "" if c.round_to == 1 else f" allowed by --round_to={c.round_to}"
            raise PipelineError(
                f"--target_latency_reduction={self.reduction} cannot be reached: with every channel "
                f"group at the narrowest width{rounding}, the estimated latency of {run.model.name} is "
                f"still {1 - reachable:.1%} of its {latency.total:.3f} ms; the largest reachable cut "
                f"is {reachable:.3f}")
        if run.is_chief and not os.path.exists(copy):
            os.makedirs(run.workdir, exist_ok=True)
            save_table(table, copy)
        self.fit_problem = latency.fit_problem
        if self.fit_problem:  # never used silently: said here, in the extract summary and the report
            print(f"[pn-tf] warning: {self.fit_problem}; the cut that extraction lands on may miss "
                  "the measured one (the report measures it)", flush=True)
        print(f"[pn-tf] latency budget: estimated {latency.total:.3f} ms ({c.latency_dtype}, "
              f"{c.tflite_threads} thread(s)) -> target {latency.total * (1 - self.reduction):.3f} ms; "
              f"the gated channels can cut at most {reachable:.1%}", flush=True)
        self.table = table

    def measures_landing(self):
        """Whether extraction lands on a measured cut (``--latency_landing``)."""
        from pn_tf.latency.landing import measurable_here

        mode = self.config.latency_landing
        return mode == "measured" or (mode == "auto" and self.table is not None
                                      and measurable_here(self.table))

    def land(self, extract, network, graph, cost, calibration=None, unpruned=None, image=None):
        """At the target by the estimate; with a measured landing (:mod:`pn_tf.latency.landing`),
        the selection is corrected until the measured cut is within 0.02 of the target."""
        if not self.measures_landing():
            return extract(self.reduction), {"latency_landing": "estimate"}
        from pn_tf.extract.select import min_widths
        from pn_tf.latency import widths_model
        from pn_tf.latency.landing import land

        c = self.config
        # Timed against the baseline the report times: in int8 the weights decide the ranges and
        # with them which ops XNNPACK takes (NASNetMobile's full-width search network ran 9.18 ms,
        # its baseline-stage network 8.11 ms, converted alike).
        baseline = unpruned() if unpruned is not None else widths_model(network, graph,
                                                                       [g.size for g in graph.groups])
        extraction, tries, not_delegated = land(
            extract, self.reduction, baseline, dtype=c.latency_dtype, num_threads=c.tflite_threads,
            runs=max(int(self.table.get("runs", 100)), 50),
            reachable=cost.max_reduction(min_widths(cost.widths, c.round_to)),
            calibration=calibration, repair_calibration=c.int8_calibration_repair, image=image,
            progress=lambda line: print(f"[pn-tf] {line}", flush=True))
        measured = min(tries, key=lambda t: abs(t["measured_reduction"] - self.reduction))
        return extraction, {"latency_landing": "measured", "latency_landing_tries": tries,
                            "measured_latency_reduction_at_extraction": measured["measured_reduction"],
                            "not_delegated_ops": not_delegated}

    def cost_model(self, graph):
        from pn_tf.latency import LatencyModel

        if self.table is None:
            raise PipelineError("the latency budget's table was not loaded (validate the run first)")
        return LatencyModel(graph, self.table)

    def selection_fields(self, selection):
        fields = super().selection_fields(selection)
        fields.update({"latency_dtype": self.config.latency_dtype,
                       "estimated_latency_ms": selection.cost,
                       "estimated_baseline_latency_ms": selection.total_cost,
                       "estimated_latency_reduction": selection.reduction,
                       "latency_table_fit_problem": self.fit_problem})
        return fields

    @property
    def timed_dtype(self):
        return self.config.latency_dtype

    def report_fields(self, extract_summary, run):
        fields = super().report_fields(extract_summary, run)
        fields.update({key: extract_summary.get(key) for key in (
            "estimated_latency_reduction", "estimated_latency_ms", "estimated_baseline_latency_ms",
            "latency_table_fit_problem", "latency_landing", "latency_landing_tries",
            "measured_latency_reduction_at_extraction", "not_delegated_ops")})
        fields["latency_table"] = artifacts.LATENCY_TABLE  # relative to the workdir
        return fields

    @staticmethod
    def report_line(report):
        tries = report.get("latency_landing_tries") or []
        landing = ""
        if tries:
            steps = ", ".join(f"{t['aim']:.1%} -> {t['measured_reduction']:.1%}" for t in tries)
            landing = (f" (extraction selected at the estimate's {report['estimated_latency_reduction']:.1%} "
                       f"after {len(tries)} timed tries, aim -> measured: {steps})")
        line = (f"Target latency reduction ({report.get('latency_dtype', 'float32')}, "
                f"{report['tflite_threads']} thread) {report['target_latency_reduction']:.1%}; "
                f"estimated by the latency table {report['estimated_latency_reduction']:.1%}{landing}; "
                f"measured on the exported models **{report['latency_reduction']:.1%}**; FLOPs "
                f"reduction {report['flops_reduction']:.1%}.")
        return line + LatencyBudget.miss_note(report)

    @staticmethod
    def miss_note(report):
        """A sentence when the exported models' measured cut is more than :data:`REPORTED_MISS`
        from the target (else ""): by how much, and what the run knows of why."""
        miss = report["latency_reduction"] - report["target_latency_reduction"]
        if abs(miss) <= REPORTED_MISS:
            return ""
        note = f" **The measured cut misses the target by {abs(miss):.1%} points"
        landed = report.get("measured_latency_reduction_at_extraction")  # the kept landing try's
        if landed is not None:
            note += (f"; extraction measured {landed:.1%} before fine-tuning, so "
                     "the fine-tuned weights (or the machine) changed the pruned model's time")
        ops = report.get("not_delegated_ops") or {}
        if ops:
            note += ("; XNNPACK leaves " + ", ".join(f"{n} {name}" for name, n in sorted(ops.items()))
                     + " op(s) to TFLite's own kernels, whose time hardly follows the widths")
        return note + ": rerun with another target, or budget FLOPs.**"
