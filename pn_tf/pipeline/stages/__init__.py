"""The pipeline's stages, in order, one module each, with one contract: ``check(ctx)`` and
``run(ctx) -> summary``.

``ctx`` is the run context (:class:`pn_tf.pipeline.runner.Pipeline`: the validated config,
the budget, data source, model source, strategy, work directory helpers). Before any stage
runs, the runner calls ``check(ctx)`` of every stage it will run: a stage refuses there, with a
:class:`~pn_tf.pipeline.errors.PipelineError`, what would make it fail later. ``run`` reads what
earlier stages wrote (their summaries, via ``ctx.summary(stage)``), writes its files into
``ctx.stage_dir(stage)`` under the names of :mod:`pn_tf.pipeline.artifacts`, and returns its
summary, whose paths are relative to the work directory; the runner writes that summary as
the stage's completion marker. Stages never import the runner.

A new stage is a module here with ``check`` and ``run``, placed in :data:`STAGES`.
"""

from pn_tf.pipeline.stages import baseline, export, extract, finetune, report, search

STAGES = (baseline, search, extract, finetune, export, report)  # the one ordered registry
STAGE_NAMES = tuple(module.__name__.rsplit(".", 1)[1] for module in STAGES)
BY_NAME = dict(zip(STAGE_NAMES, STAGES))
