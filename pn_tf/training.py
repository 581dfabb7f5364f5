"""Supervised training of a (gated or pruned) network: baseline training and fine-tuning.

METHOD.md item 9: SGD with momentum 0.9, lr 0.1 at batch 128, weight decay 1e-4, a
step schedule (x0.1 at 50% and 75%) or a cosine one. Keras's SGD decays weights
*decoupled* from the gradient (``w -= lr * wd * w``), while PyTorch's L2 term goes
through the momentum buffer, which amplifies it by ``1 / (1 - momentum)``; so the
PyTorch recipe's 1e-4 corresponds to ``weight_decay = 1e-4 / (1 - 0.9) = 1e-3`` here
(:func:`keras_weight_decay`).

``precision`` other than float32 trains a copy of the model whose layers compute in a Keras
mixed policy (:func:`with_precision`): variables stay float32, the trained weights are copied
back, and evaluation, search and export see the float32 model. ``mixed_bfloat16`` suits CPUs
with AMX/AVX512-BF16 (about 1.7x faster than float32 for ResNet-56 on a 2-core Xeon with AMX,
both with the fused batch norm of :mod:`pn_tf.layers.batchnorm`; slower for depthwise-heavy
MobileNetV2; ``tools/bench_train_speed.py``), TPUs and recent GPUs; on a CPU without them it is
emulated and several times slower than float32 (the pipeline warns, :func:`bfloat16_hardware`).
``mixed_float16`` suits GPUs and adds dynamic loss scaling.

Runs resume: ``keras.callbacks.BackupAndRestore`` keeps the weights, optimizer state
and epoch in ``<workdir>/backup``; running again continues after the last finished
epoch, with the training data reseeded (:func:`resume_seed`) so that it draws new batches
instead of replaying its first epoch's. A NaN/Inf loss stops training with
:class:`NonFiniteLossError` before the epoch's backup is written, so the last good
checkpoint stays intact.
"""

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings

import keras
import numpy as np

from pn_tf.io import write_json
from pn_tf.layers import gate_layers
from pn_tf.losses import classification_loss

SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss."""


@dataclasses.dataclass
class TrainConfig:
    """A training recipe.

    Attributes:
        epochs: number of epochs.
        learning_rate: peak learning rate (0.1 at batch 128 in the paper).
        momentum: SGD momentum.
        weight_decay: PyTorch-style L2 coefficient (converted for Keras's SGD).
        schedule: ``"step"`` (x0.1 at 50% and 75%), ``"cosine"`` or ``"constant"``.
        warmup_epochs: linear warm-up epochs, may be fractional (cosine schedule only).
        label_smoothing: label smoothing of the cross-entropy.
        precision: compute precision of training, one of ``PRECISIONS`` (weights stay float32).
        allow_precision_change: let an interrupted run resume in another precision when the
            optimizer state carries over unchanged (float32 <-> mixed_bfloat16; the change is
            recorded, :func:`check_resume_precision`).
    """

    epochs: int = 200
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"
    warmup_epochs: float = 0
    label_smoothing: float = 0.0
    precision: str = "float32"
    allow_precision_change: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def keras_weight_decay(weight_decay, momentum):
    """The decoupled decay equivalent to PyTorch's coupled L2 under SGD momentum."""
    return weight_decay / (1.0 - momentum) if momentum < 1 else weight_decay


def cosine_warmup_epochs(epochs):
    """Warm-up of a cosine schedule: one epoch, or the first half of a one-epoch run."""
    return min(1.0, epochs / 2)


def learning_rate_schedule(config, steps_per_epoch):
    total = config.epochs * steps_per_epoch
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "step":
        boundaries = [int(total * 0.5), int(total * 0.75)]
        values = [config.learning_rate, config.learning_rate * 0.1, config.learning_rate * 0.01]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else config.learning_rate, max(1, total - warmup), alpha=0.0,
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
    )


def make_optimizer(config, steps_per_epoch):
    return keras.optimizers.SGD(
        learning_rate_schedule(config, steps_per_epoch), momentum=config.momentum, nesterov=False,
        weight_decay=keras_weight_decay(config.weight_decay, config.momentum),
    )


class StopOnNonFinite(keras.callbacks.Callback):
    """Raises :class:`NonFiniteLossError` on the first NaN/Inf loss."""

    def __init__(self, stage):
        super().__init__()
        self.stage = stage

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise NonFiniteLossError(
                f"{self.stage}: the loss became {float(loss)} at batch {batch}; the last good "
                "checkpoint is kept. Lower the learning rate or check the inputs."
            )


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs (for TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            lr = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(np.asarray(lr))


def backup_dir(workdir):
    """Where ``BackupAndRestore`` keeps a training run's resumable state."""
    return os.path.join(workdir, "backup")


def standard_callbacks(workdir, stage, extra=(), update_freq="epoch"):
    """Backup/restore, NaN guard, CSV + TensorBoard logs under ``workdir``."""
    os.makedirs(workdir, exist_ok=True)
    return [
        keras.callbacks.BackupAndRestore(backup_dir(workdir), delete_checkpoint=False),
        StopOnNonFinite(stage),
        LearningRateLogger(),
        keras.callbacks.CSVLogger(os.path.join(workdir, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"), update_freq=update_freq),
        *extra,
    ]


class ResumeError(ValueError):
    """An interrupted training run cannot be resumed with the settings asked for."""


_PRECISION_FILE = "precision.json"  # beside BackupAndRestore's files in <workdir>/backup


# Policies without a loss scaler: the optimizer state has the same structure in each, so a run
# can move between them (mixed_float16 wraps the optimizer in a LossScaleOptimizer).
_SAME_OPTIMIZER_STATE = ("float32", "mixed_bfloat16")


def check_resume_precision(workdir, precision, stage, allow_change=False):
    """Checks that an interrupted run in ``workdir`` may resume in ``precision``.

    Resuming would restore the weights but not the optimizer state when the optimizer's
    structure differs (``mixed_float16`` wraps it in a loss scaler), silently restarting
    momentum and the learning-rate schedule; a run should also keep one recipe throughout.
    With ``allow_change`` a run may still move between float32 and mixed_bfloat16 (e.g. to a
    machine without bfloat16 instructions, where mixed_bfloat16 is several times slower).

    Returns:
        The precision changes of the run so far, oldest first, including one this resume
        makes: a list of ``{"after_epoch": n, "from": old, "to": new}`` ([] for most runs).

    Raises:
        ResumeError: ``workdir/backup`` was written in another precision and the change is not
            allowed, or its record is unreadable.
    """
    backup = backup_dir(workdir)
    path = os.path.join(backup, _PRECISION_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            record = json.load(f)
        previous, changes = record["precision"], list(record.get("changes", []))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ResumeError(f"{stage}: {path} is unreadable ({err}); delete {backup} "
                          "to restart the stage from its first epoch") from err
    if previous == precision:
        return changes
    movable = {previous, precision} <= set(_SAME_OPTIMIZER_STATE)
    if allow_change and movable:
        epoch = _finished_epochs(backup)
        print(f"[pn-tf] {stage}: resuming a run trained in {previous} for {epoch} epochs in "
              f"{precision} (--allow_precision_change); recorded in {path}", flush=True)
        return changes + [{"after_epoch": epoch, "from": previous, "to": precision}]
    hint = (" or pass --allow_precision_change to continue it in the new precision"
            if movable else "")
    raise ResumeError(
        f"{stage}: the interrupted run in {backup} trained with "
        f"--precision={previous}, and this run asks for --precision={precision}; resume it "
        f"with --precision={previous}{hint}, or delete {backup} to restart the "
        "stage from its first epoch in the new precision")


def _finished_epochs(backup):
    """Epochs finished by the interrupted run whose BackupAndRestore state is in ``backup``."""
    try:
        with open(os.path.join(backup, "training_metadata.json")) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resume_seed(workdir, seed):
    """The data seed of a training run in ``workdir``: ``seed``, or one derived from it on resume.

    tf.data's reshuffling and the per-epoch augmentation keys (``pn_tf.data``) advance with each
    pass *in this process*: a run resumed with its original seed would replay the batches of its
    own first epoch (same images, order and crops) rather than draw fresh ones. Resuming after
    ``n`` finished epochs therefore seeds the data with a value distinct for each ``n``; a run
    that is never interrupted keeps ``seed``. ``None`` (a random seed) stays ``None``.
    """
    epochs = _finished_epochs(backup_dir(workdir))
    if seed is None or not epochs:
        return seed
    return (seed + 1_000_003 * epochs) % 2**31


def bfloat16_hardware():
    """Whether this machine computes bfloat16 natively: a GPU/TPU, or a CPU with AMX/AVX512-BF16.

    Returns None where the CPU's flags cannot be read (not Linux).
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"):
        return True
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:
        return None
    return any(flag in cpuinfo.split() for flag in ("avx512_bf16", "amx_bf16"))


def with_precision(model, policy):
    """A copy of the functional ``model`` computing in dtype policy ``policy``, same weights.

    Every layer but the ones producing the outputs takes ``policy``; those stay float32, so
    the loss sees float32 logits (Keras's mixed-precision advice). Layer names, order and
    classes are kept, so weights (and ``BackupAndRestore`` backups) move between the copy and
    the original one to one.
    """
    heads = model.get_config()["output_layers"]  # ["name", node, index] or a list of them
    outputs = {heads[0]} if isinstance(heads[0], str) else {head[0] for head in heads}

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name in outputs else policy
        return layer.__class__.from_config(config)

    with model.distribute_strategy.scope():
        twin = keras.models.clone_model(model, clone_function=clone)
    copy_weights(model, twin)
    return twin


def copy_weights(source, target):
    """Copies every layer's weights from ``source`` to the same-named layer of ``target``."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def compile_classifier(model, config, steps_per_epoch):
    optimizer = make_optimizer(config, steps_per_epoch)
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=classification_loss(model, config.label_smoothing),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def fit_classifier(model, train_ds, config, workdir, stage, validation_ds=None,
                   steps_per_epoch=None, verbose=2, callbacks=()):
    """Trains ``model`` by ``config`` with resumable checkpoints in ``workdir``.

    Args:
        model: a keras.Model mapping images to logits.
        train_ds: a batched tf.data.Dataset of (images, labels), one pass per epoch.
        config: a :class:`TrainConfig`.
        workdir: folder for the backup, history.csv and TensorBoard logs.
        stage: name used in messages.
        validation_ds: optional held-out batches evaluated after every epoch.
        steps_per_epoch: batches per epoch (needed for the schedule; counted if None).

    Returns:
        The Keras History of this (possibly resumed) run. With a mixed ``config.precision``
        the epochs' logs come from the mixed-precision copy; ``model`` holds its weights after.
        ``callbacks`` are attached to that copy too (its weights, not ``model``'s, change
        during training). Its ``precision_changes`` lists the run's precision changes
        (:func:`check_resume_precision`; [] unless it resumed with ``allow_precision_change``).

    Raises:
        ResumeError: ``workdir`` holds an interrupted run of another precision.
    """
    changes = check_resume_precision(workdir, config.precision, stage,
                                     config.allow_precision_change)
    if steps_per_epoch is None:
        from pn_tf.data import with_cardinality

        train_ds, steps_per_epoch = with_cardinality(train_ds)
        if steps_per_epoch <= 0:
            raise ValueError(f"{stage}: the training data holds no full batch")
    trained = model if config.precision == "float32" else with_precision(model, config.precision)
    for gate in gate_layers(trained):  # gates stay as they are while weights train
        gate.trainable = False
    compile_classifier(trained, config, steps_per_epoch)
    write_json(os.path.join(backup_dir(workdir), _PRECISION_FILE),
               {"precision": config.precision, "changes": changes})
    history = trained.fit(
        train_ds, epochs=config.epochs, validation_data=validation_ds, verbose=verbose, shuffle=False,
        callbacks=standard_callbacks(workdir, stage, callbacks),
    )
    history.precision_changes = changes
    if trained is not model:
        copy_weights(trained, model)
    return history


def evaluate_accuracy(model, dataset):
    """Top-1 accuracy of ``model`` (logits or probabilities) over a batched dataset."""
    model.compile(loss=classification_loss(model),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    with warnings.catch_warnings():  # an image folder's length is unknown until read to its end
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        return float(model.evaluate(dataset, verbose=0, return_dict=True)["accuracy"])


def evaluate_splits(model, data, take=None):
    """Held-out and (when ``data`` has one) test accuracy; ``accuracy`` is the report's one.

    ``data``: a :class:`pn_tf.data_sources.DataSource`. The test number is for the report
    only; without a test split, ``accuracy`` is the held-out one (``accuracy_split`` says so).
    """
    from pn_tf import data as data_lib

    result = {}
    size = data_lib.model_image_size(model)
    for split in ("holdout", "test") if data.has_test else ("holdout",):
        ds = data.batches(split, 256, training=False, image_size=size, take=take)
        result[f"{split}_accuracy"] = evaluate_accuracy(model, ds)
    result["accuracy"] = result[f"{data.eval_split}_accuracy"]
    result["accuracy_split"] = data.eval_split
    return result


def train_and_evaluate(model, data, workdir, config, stage, batch_size=128, seed=0, take=None,
                       eval_take=None, verbose=2):
    """Trains on ``train_main`` of ``data`` (validating on ``holdout``), then evaluates.

    The weights stay in ``model`` (the caller saves them); returns a summary dict.
    """
    from pn_tf import data as data_lib

    size = data_lib.model_image_size(model)
    train = data.batches("train_main", batch_size, training=True, image_size=size,
                         seed=resume_seed(workdir, seed), take=take)
    holdout = data.batches("holdout", 256, training=False, image_size=size, take=eval_take)
    start = time.time()
    train, steps_per_epoch = data_lib.with_cardinality(train)
    history = fit_classifier(model, train, config, workdir, stage, validation_ds=holdout,
                             steps_per_epoch=steps_per_epoch, verbose=verbose)
    # Statistics for inference: re-estimated on un-augmented training images, whose pipeline
    # draws no random numbers (the next stage's data then sees the same random state).
    plain = data.batches("train_main", batch_size, training=False, image_size=size, take=take)
    refreshed = refresh_stale_batchnorm(model, plain, config.epochs * steps_per_epoch)
    summary = evaluate_splits(model, data, eval_take)
    summary.update(train_split="train_main", batch_size=batch_size, recipe=dataclasses.asdict(config),
                   train_seconds_this_run=round(time.time() - start, 1))
    if history.precision_changes:
        summary["precision_changes"] = history.precision_changes
    if refreshed:
        summary["batchnorm_refreshed"] = refreshed
    return summary


# Moving averages that span more than this share of a run's steps are refreshed after it.
STALE_SHARE = 0.1
REFRESH_BATCHES = 100


def refresh_stale_batchnorm(model, batches, steps, max_batches=REFRESH_BATCHES):
    """Re-estimates BN moving statistics whose average spans too much of the training run.

    A BN layer averages its batch statistics over about ``1 / (1 - momentum)`` steps:
    keras.applications' momentum 0.999 spans 1000 steps, so after a fine-tuning run of
    1,300 steps its moving statistics still mix in weights of the run's start, and the
    trained model scores far below its training accuracy in inference mode (MobileNetV2 on
    imagenette: 20% against 61%). When a layer's span exceeds ``STALE_SHARE`` of ``steps``,
    every BN layer's statistics are set to their average over ``max_batches`` of
    ``batches`` ("precise BN"; the pipeline passes un-augmented training images); the
    weights do not change. The zoo's momentum 0.9 (10 steps) triggers it only in runs of
    fewer than 100 steps (smoke runs).

    Returns:
        None, or ``{"layers", "batches", "longest_span_steps"}`` when it refreshed.
    """
    bns = batchnorm_layers(model)
    spans = [1.0 / max(1e-12, 1.0 - float(bn.momentum)) for bn in bns]
    if not bns or max(spans) <= STALE_SHARE * max(1, steps):
        return None
    count = min(max_batches, max(1, steps))
    set_bn_statistics(model, batches.take(count))
    print(f"[pn-tf] refreshed the moving statistics of {len(bns)} BatchNormalization layers over "
          f"{count} training batches: momentum {max(float(bn.momentum) for bn in bns)} averages over "
          f"~{max(spans):.0f} steps, more than {STALE_SHARE:.0%} of this run's {steps}", flush=True)
    return {"layers": len(bns), "batches": count, "longest_span_steps": round(max(spans))}


def batchnorm_layers(model):
    """Every BatchNormalization layer of ``model``, in nested models and user layers too."""
    return [layer for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)]


def set_bn_statistics(model, batches):
    """Sets every BN's moving mean/variance to the average of its batch statistics on ``batches``.

    A quick calibration for untrained models (latency benchmarks, int8 conversion tests): the
    weights stay as they are; only the BN running statistics change, so activations have a
    realistic scale. ``batches`` yields image arrays or ``(images, labels)`` pairs.
    """
    bns = batchnorm_layers(model)
    saved = [bn.momentum for bn in bns]
    try:
        for step, batch in enumerate(batches):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            for bn in bns:  # running average: batch k gets weight 1 / (k + 1)
                bn.momentum = step / (step + 1.0)
            model(images, training=True)
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
    return model


@contextlib.contextmanager
def batchnorm_statistics_from(model, batches):
    """Inside the block, ``model``'s BN moving statistics are those of ``batches``
    (:func:`set_bn_statistics`); after it, the ones it had. What a network will look like once
    training ends, without changing the network that is kept (the measured latency landing
    times extractions this way: an int8 network's speed follows the ranges its BN statistics
    set, and fine-tuning re-estimates them on the pruned network)."""
    bns = [bn for bn in batchnorm_layers(model) if bn.built]
    saved = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bns]
    try:
        if bns:
            set_bn_statistics(model, batches)
        yield model
    finally:
        for bn, (mean, variance) in zip(bns, saved):
            bn.moving_mean.assign(mean)
            bn.moving_variance.assign(variance)
