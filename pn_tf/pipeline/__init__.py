"""The pipeline: baseline -> PN search -> extraction -> fine-tuning -> export -> report.

* ``config``    -- every setting of a run (flags and a frozen :class:`RunConfig`), from
  :mod:`pn_tf.settings`, the stages and the budgets.
* ``runner``    -- :class:`Pipeline`: validates everything before any work, then runs
  the stages, skipping finished ones (the run context the stages receive).
* ``validation`` -- the run-level checks (options, sources, sizes that follow the data, the
  work directory's pinned settings); ``strategy`` -- the tf.distribute strategy.
* ``budgets``   -- the run's budget, one class per kind (FLOPs, latency).
* ``models``    -- what is pruned: a zoo architecture or a ``--model`` file.
* ``artifacts`` -- the names of the files a run writes.
* ``stages``    -- one module per stage, each ``check(ctx)`` and ``run(ctx) -> summary``, in
  one ordered registry.
* ``errors``    -- :class:`PipelineError`, the user-fixable problems (exit status 2).

The data side is :mod:`pn_tf.data_sources` (TFDS or an image folder).
"""

from pn_tf.pipeline.config import OPTIONS, RunConfig, define_flags
from pn_tf.pipeline.errors import PipelineError
from pn_tf.pipeline.runner import Pipeline
from pn_tf.pipeline.strategy import check_tf_config, make_strategy
from pn_tf.pipeline.stages import STAGE_NAMES

__all__ = ["OPTIONS", "STAGE_NAMES", "Pipeline", "PipelineError", "RunConfig", "check_tf_config",
           "define_flags", "make_strategy"]
