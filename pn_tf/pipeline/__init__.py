"""The pipeline: baseline -> PN search -> extraction -> fine-tuning -> export -> report.

* ``config``    -- every setting, declared once (flags and :class:`RunConfig`).
* ``runner``    -- :class:`Pipeline`: validates everything before any work, then runs
  the stages, skipping finished ones (the run context the stages receive).
* ``models``    -- what is pruned: a zoo architecture or a ``--model`` file.
* ``artifacts`` -- the names of the files a run writes.
* ``stages``    -- one module per stage, each ``run(ctx) -> summary``.
* ``errors``    -- :class:`PipelineError`, the user-fixable problems (exit status 2).

The data side is :mod:`pn_tf.data_sources` (TFDS or an image folder).
"""

from pn_tf.pipeline.config import OPTIONS, STAGES, RunConfig, define_flags
from pn_tf.pipeline.errors import PipelineError
from pn_tf.pipeline.runner import Pipeline, check_tf_config, make_strategy

__all__ = ["OPTIONS", "STAGES", "Pipeline", "PipelineError", "RunConfig", "check_tf_config",
           "define_flags", "make_strategy"]
