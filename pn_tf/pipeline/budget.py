"""The run's budget: FLOPs (``--target_flops_reduction``) or measured latency
(``--target_latency_reduction``), checked before any stage, and the cost model the search and
extraction use for it (a :class:`~pn_tf.graph.FlopsModel` or a
:class:`~pn_tf.latency.LatencyModel`)."""

import os

from pn_tf.pipeline import artifacts
from pn_tf.pipeline.errors import PipelineError


def target_reduction(config):
    """The fraction to remove: of the latency when one is asked, else of the FLOPs."""
    latency = config.target_latency_reduction
    return config.target_flops_reduction if latency is None else latency


def check_flags(config):
    """The budget flags alone, before anything is built."""
    c = config
    if c.target_latency_reduction is None:
        if not 0.0 < c.target_flops_reduction < 1.0:
            raise PipelineError(f"--target_flops_reduction must be in (0, 1), got {c.target_flops_reduction}")
        if c.latency_table:
            raise PipelineError("--latency_table goes with --target_latency_reduction=R (the "
                                "fraction of the latency to remove)")
        return
    if not 0.0 < c.target_latency_reduction < 1.0:
        raise PipelineError(f"--target_latency_reduction must be in (0, 1), got {c.target_latency_reduction}")
    if c.p is not None:
        raise PipelineError("--p bounds the FLOPs regularizer directly; with "
                            "--target_latency_reduction leave it out")
    if c.latency_dtype not in c.tflite or "float32" not in c.tflite:
        raise PipelineError(f"--latency_dtype={c.latency_dtype} is measured on the exported TFLite "
                            f"files: --tflite must include float32 and {c.latency_dtype} (got "
                            f"--tflite={','.join(c.tflite)})")
    if c.latency_table and not os.path.isfile(c.latency_table):
        raise PipelineError(f"--latency_table={c.latency_table} does not exist; build one with "
                            "tools/latency_model.py --output=PATH, or leave the flag out to build "
                            "it here")


def check_flops(config, network):
    """A FLOPs target the network (and ``--round_to``) can reach; ``--p`` positive."""
    from pn_tf.extract.select import min_widths
    from pn_tf.graph import FlopsModel

    c = config
    flops = FlopsModel(network)
    if c.target_latency_reduction is not None:
        return flops
    try:
        p = c.p if c.p is not None else flops.p_for_reduction(c.target_flops_reduction)
    except ValueError as err:
        raise PipelineError(f"--target_flops_reduction={c.target_flops_reduction}: {err}") from err
    if not p > 0:
        raise PipelineError(f"--p must be > 0, got {c.p}")
    floor = flops.count(min_widths(flops.widths, c.round_to)) / flops.total
    if floor > 1.0 - c.target_flops_reduction:
        raise PipelineError(
            f"--round_to={c.round_to} cannot remove {c.target_flops_reduction:.0%} of the FLOPs: "
            f"the narrowest widths it allows still cost {floor:.1%} of the network (layers "
            "outside the prunable groups included); lower --target_flops_reduction or --round_to")
    return flops


def latency_table(config, network, workdir, name, is_chief=True):
    """The latency table of the run, checked to reach the target; kept in the workdir.

    From ``--latency_table``, else the workdir's copy (a resumed run), else built here (and
    cached, :func:`pn_tf.latency.cached_table`).
    """
    from pn_tf.extract.select import min_widths
    from pn_tf.graph import ChannelGraph
    from pn_tf.latency import LatencyModel, LatencyTableError, cached_table, load_table, save_table

    c = config
    graph = ChannelGraph(network)
    copy = os.path.join(workdir, artifacts.LATENCY_TABLE)
    try:
        if c.latency_table:
            table = load_table(c.latency_table)
        elif os.path.exists(copy):
            table = load_table(copy)
        else:
            print(f"[pn-tf] latency table: timing the units of {name} at {c.latency_dtype}, "
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
    if c.target_latency_reduction >= reachable:
        rounding = "" if c.round_to == 1 else f" allowed by --round_to={c.round_to}"
        raise PipelineError(
            f"--target_latency_reduction={c.target_latency_reduction} cannot be reached: with every "
            f"channel group at the narrowest width{rounding}, the estimated latency of {name} is "
            f"still {1 - reachable:.1%} of its {latency.total:.3f} ms; the largest reachable cut is "
            f"{reachable:.3f}")
    if is_chief and not os.path.exists(copy):
        os.makedirs(workdir, exist_ok=True)
        save_table(table, copy)
    print(f"[pn-tf] latency budget: estimated {latency.total:.3f} ms ({c.latency_dtype}, "
          f"{c.tflite_threads} thread(s)) -> target "
          f"{latency.total * (1 - c.target_latency_reduction):.3f} ms; the gated channels can cut "
          f"at most {reachable:.1%}", flush=True)
    return table


def cost_model(config, graph, table=None):
    """What the search regularizes and extraction selects on: the FLOPs T(a), or L(a)."""
    from pn_tf.graph import FlopsModel
    from pn_tf.latency import LatencyModel

    if config.target_latency_reduction is None:
        return FlopsModel(graph)
    if table is None:
        raise PipelineError("the latency budget's table was not loaded (validate the run first)")
    return LatencyModel(graph, table)
