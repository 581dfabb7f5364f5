"""Latency budgets: a measured table of the deployment runtime and the estimate L(a) built on it.

:mod:`~pn_tf.latency.units` cuts a network into what TFLite runs as one op;
:mod:`~pn_tf.latency.table` times those units at a ladder of widths (and caches the table);
:mod:`~pn_tf.latency.model` turns the table into :class:`LatencyModel`, the latency twin of the
FLOPs model that the search and the channel selection take.
"""

from pn_tf.latency.model import LatencyModel
from pn_tf.latency.table import (LatencyTableError, build_table, cached_table, fit_problem,
                                 fit_whole, load_table, save_table, time_files, widths_model)

__all__ = ["LatencyModel", "LatencyTableError", "build_table", "cached_table", "fit_problem",
           "fit_whole", "load_table", "save_table", "time_files", "widths_model"]
