"""The pipeline's stages, one module each, with one contract: ``run(ctx) -> summary``.

``ctx`` is the run context (:class:`pn_tf.pipeline.runner.Pipeline`: config, data
source, model source, strategy, work directory helpers). A stage reads what earlier
stages wrote (their summaries, via ``ctx.summary(stage)``), writes its files into
``ctx.stage_dir(stage)`` under the names of :mod:`pn_tf.pipeline.artifacts`, and
returns its summary; the runner writes that summary as the stage's completion marker.
Stages never import the runner.
"""

from pn_tf.pipeline.stages import baseline, export, extract, finetune, report, search

STAGE_MODULES = {"baseline": baseline, "search": search, "extract": extract, "finetune": finetune,
                 "export": export, "report": report}
