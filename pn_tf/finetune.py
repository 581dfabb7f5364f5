"""The fine-tuning stage: train the extracted narrow model (METHOD.md item 9, 10).

Same recipe family as the baseline (SGD + momentum, weight decay, step or cosine
schedule), on ``train_main`` with the held-out split for monitoring; the test
accuracy is measured once at the end, for the report.
"""

import os

from pn_tf.io import atomic_path
from pn_tf.training import train_and_evaluate


def finetune_stage(model, dataset, workdir, config, batch_size=128, data_dir=None, seed=0,
                   take=None, eval_take=None, verbose=2):
    """Fine-tunes ``model`` in place; writes ``finetuned.keras``; returns the summary."""
    summary = train_and_evaluate(model, dataset, workdir, config, "finetune", batch_size=batch_size,
                                 data_dir=data_dir, seed=seed, take=take, eval_take=eval_take,
                                 verbose=verbose)
    with atomic_path(os.path.join(workdir, "finetuned.keras")) as tmp:
        model.save(tmp)
    return summary
