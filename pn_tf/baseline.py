"""The baseline stage: train the unpruned network (or load a given checkpoint).

The baseline is trained on ``train_main`` (the training set minus the held-out
split), so that the held-out images used by the search and for model selection were
never seen by the weights. Its test accuracy is reported, never used to choose.
"""

import json
import os
import time

import keras

from pn_tf import data as data_lib
from pn_tf.io import atomic_path, write_json
from pn_tf.training import TrainConfig, fit_classifier


def evaluate_accuracy(model, dataset):
    """Top-1 accuracy of ``model`` (logits) over a batched dataset."""
    model.compile(metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return float(model.evaluate(dataset, verbose=0, return_dict=True)["accuracy"])


def train_baseline(model, dataset, workdir, config, batch_size=128, data_dir=None, seed=0,
                   take=None, verbose=2):
    """Trains ``model`` on ``dataset``'s train_main split; writes weights and a summary.

    Returns:
        dict with ``accuracy`` (test split), ``holdout_accuracy``, ``epochs`` and the recipe.
    """
    os.makedirs(workdir, exist_ok=True)
    train = data_lib.make_dataset(dataset, "train_main", batch_size, training=True,
                                  data_dir=data_dir, seed=seed, take=take)
    holdout = data_lib.make_dataset(dataset, "holdout", 256, training=False, data_dir=data_dir)
    start = time.time()
    fit_classifier(model, train, config, workdir, "baseline", validation_ds=holdout, verbose=verbose)
    test = data_lib.make_dataset(dataset, "test", 256, training=False, data_dir=data_dir)
    summary = {
        "arch": model.name,
        "dataset": dataset,
        "accuracy": evaluate_accuracy(model, test),
        "holdout_accuracy": evaluate_accuracy(model, holdout),
        "train_split": "train_main",
        "batch_size": batch_size,
        "recipe": config.__dict__,
        "train_seconds_this_run": round(time.time() - start, 1),
    }
    with atomic_path(os.path.join(workdir, "baseline.weights.h5")) as tmp:
        model.save_weights(tmp)
    write_json(os.path.join(workdir, "baseline.json"), summary)
    return summary
