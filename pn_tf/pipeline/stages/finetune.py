"""Fine-tune: train the extracted narrow model (METHOD.md items 9, 10).

Same recipe family as the baseline (SGD + momentum, weight decay, step or cosine
schedule), on ``train_main`` with the held-out split for monitoring; the test
accuracy is measured once at the end, for the report. ``--finetune_epochs=0`` keeps
the extracted model as it is.
"""

import os

from pn_tf.pipeline import artifacts


def check(ctx):
    """One full training batch; the precision an interrupted fine-tuning started in."""
    c = ctx.config
    if c.finetune_epochs:
        ctx.check_split("train_main", c.train_take, c.batch_size, "--batch_size")
    ctx.check_resume("finetune")


def run(ctx):
    from pn_tf.io import atomic_path
    from pn_tf.training import evaluate_splits

    c = ctx.config
    model = ctx.load_keras(ctx.summary("extract")["model"])
    workdir = ctx.stage_dir("finetune")
    if c.finetune_epochs == 0:
        summary = evaluate_splits(model, ctx.data, c.eval_take)
        summary["trained"] = False
    else:
        summary = ctx.train(model, "finetune")
    path = os.path.join(workdir, artifacts.FINETUNED_MODEL)
    with atomic_path(path) as tmp:
        model.save(tmp)
    summary["model"] = ctx.relative(path)
    return summary
