"""The search stage: run PNSearch over the held-out split, resumably, with monitoring.

METHOD.md item 9 (CIFAR-10): 200 epochs over the held-out 10% of the training set,
batch 256 (ResNet-56) / 128 (MobileNetV2), crop + flip; gates AdamW 5e-2 (x0.1 at 80%
of the epochs), PN AdamW 1e-3. The searched gate logits are saved with the network
weights; the architecture itself is chosen later, deterministically, by extraction.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from pn_tf import settings
from pn_tf.search.search_model import PNSearch
from pn_tf.training import standard_callbacks


def _setting(name):
    return dataclasses.field(default=settings.default(name))


@dataclasses.dataclass
class SearchConfig:
    """The search recipe: the settings of :mod:`pn_tf.settings` (same names, same defaults: the
    paper's CIFAR-10 ResNet-56 setting) and the paper's fixed values.

    ``target_reduction`` is the fraction of the cost model's total to remove (the run's budget
    decides which cost); ``p`` overrides the regularizer bound it implies.
    """

    search_epochs: int = _setting("search_epochs")
    search_batch_size: int = _setting("search_batch_size")
    predictor: str = _setting("predictor")
    projection: str = _setting("projection")
    pn_noise: float = _setting("pn_noise")
    pn_batch_size: int = _setting("pn_batch_size")
    gate_lr: float = _setting("gate_lr")
    flops_reg_weight: float = _setting("flops_reg_weight")
    seed: int = _setting("seed")
    target_reduction: float = 0.5
    p: float = None
    gate_weight_decay: float = 1e-2
    pn_lr: float = 1e-3
    pn_weight_decay: float = 1e-3
    lr_drop_at: float = 0.8
    knobs: tuple = ("--search_epochs", "--flops_reg_weight")  # how warnings name the two knobs

    @classmethod
    def of(cls, config, **values):
        """The recipe of a run's ``config`` (any object with the settings' attributes), with
        ``values`` (e.g. the budget's ``target_reduction`` and ``p``) on top."""
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)
                  if hasattr(config, f.name)}
        return cls(**{**fields, **values})


class GateChart(keras.callbacks.Callback):
    """Per-layer kept fraction (noise-free hard gates) as TensorBoard scalars and a bar chart."""

    def __init__(self, logdir, every_steps=0):
        super().__init__()
        self.writer = tf.summary.create_file_writer(logdir)
        self.every_steps = every_steps

    def _kept(self):
        return [float(np.mean(v)) for v in self.model.deterministic_gates()]

    def on_epoch_end(self, epoch, logs=None):
        kept = self._kept()
        with self.writer.as_default(step=epoch):
            for gate, fraction in zip(self.model.gates, kept):
                tf.summary.scalar(f"kept_fraction/{gate.name}", fraction)
            tf.summary.image("kept_width_per_layer", bar_chart(kept)[None])
            tf.summary.scalar("budget_cost_ratio", self.model.budget_ratio)
        self.writer.flush()


def bar_chart(values, height=96, bar=6, gap=2):
    """A white-on-dark bar chart image (H, W, 3) of values in [0, 1], one bar per layer."""
    width = len(values) * (bar + gap) + gap
    image = np.full((height, width, 3), 30, dtype=np.uint8)
    image[height // 2, :, :] = 70  # the 50% line
    for i, v in enumerate(values):
        top = height - int(round(np.clip(v, 0, 1) * (height - 1)))
        left = gap + i * (bar + gap)
        image[top:, left:left + bar, :] = (90, 200, 255)
    return image


def late_pn_warning(pn_start, total_steps, pn_batch_size, average_every):
    """A warning when the PN terms would act in less than half of the search, else None.

    The PN terms switch on once the episodic memory holds ``pn_batch_size`` entries, one per
    ``average_every`` steps, i.e. at step ``pn_start``; a short search with the default batch
    of 64 is then a DG search for most (or all) of its steps. ``pn_start`` None: no predictor.
    """
    if pn_start is None or pn_start <= total_steps // 2:
        return None
    active = max(0, total_steps - pn_start)
    return (f"the PN terms act in only {active} of the search's {total_steps} steps: they start "
            f"once the memory holds --pn_batch_size={pn_batch_size} entries, one per "
            f"{average_every} steps (step {pn_start}); lower --pn_batch_size or search longer")


def over_budget_warning(threshold_ratio, budget_ratio, tolerance=0.02,
                        knobs=("--search_epochs", "--flops_reg_weight"), budget="FLOPs"):
    """A warning when the search's hard gates end above the budget (of ``budget``'s cost), else None.

    Extraction lands on the budget anyway, by cutting the lowest-scored channels, some of
    whose gates are still open; the extracted model then starts far below the gated
    network's accuracy (MobileNetV2 on CIFAR-10: 0.66-0.68 of the FLOPs after 10 epochs at
    a 0.50 budget; docs/results.md). ``knobs``: how the caller names the search length and
    the regularizer weight.
    """
    if threshold_ratio <= budget_ratio + tolerance:
        return None
    return (f"the search ended with its hard gates at {threshold_ratio:.3f} of the {budget}, above the "
            f"{budget_ratio:.3f} budget: extraction will cut channels whose gates are open; search "
            f"longer ({knobs[0]}) or raise {knobs[1]}")


def run_search(network, train, config, evaluation=None, workdir=None, strategy=None, verbose=2,
               eval_split="holdout", cost=None):
    """The one search driver (the pipeline's search stage and :func:`pn_tf.prune` call it).

    Searches the gate logits of ``network`` (a gated model whose weights are the baseline)
    in place, by ``config``'s recipe: gates AdamW with its learning rate x0.1 after
    ``lr_drop_at`` of the steps, the PN AdamW, the regularizer on ``cost`` (the budget's cost
    model: the FLOPs T(a) by default, or e.g. the latency estimate L(a)) at
    ``config.target_reduction`` of it.

    Args:
        train: batched ``(images, labels)`` to search on (the held-out split), one pass per epoch.
        config: a :class:`SearchConfig`.
        evaluation: optional batches on which the gated network is evaluated after every
            epoch and at the end (the ``eval_split``).
        workdir: where the epoch backups (resume after a kill), history.csv and TensorBoard
            logs go; None: no files.
        strategy: the tf.distribute strategy whose scope holds ``network``.

    Returns:
        The summary dict. The network keeps its searched logits (the caller saves it) and
        its layers' ``trainable`` flags as they were before the search.
    """
    from pn_tf.data import with_cardinality

    strategy = strategy or tf.distribute.get_strategy()
    train, steps_per_epoch = with_cardinality(train)
    if steps_per_epoch <= 0:
        raise ValueError("the search data must be a finite dataset of at least one batch")
    trainable = [(layer, layer.trainable) for layer in network._flatten_layers(include_self=False)]
    with strategy.scope():
        search = PNSearch(network, predictor=config.predictor, target_reduction=config.target_reduction,
                          cost=cost, p=config.p, projection=config.projection, pn_noise=config.pn_noise,
                          pn_batch_size=config.pn_batch_size, reg_weight=config.flops_reg_weight,
                          seed=config.seed)
        drop = max(1, int(config.search_epochs * config.lr_drop_at * steps_per_epoch))
        gate_lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            [drop], [config.gate_lr, config.gate_lr * 0.1])
        search.compile(
            gate_optimizer=keras.optimizers.AdamW(gate_lr, weight_decay=config.gate_weight_decay),
            pn_optimizer=keras.optimizers.AdamW(config.pn_lr, weight_decay=config.pn_weight_decay),
        )
    total_steps = config.search_epochs * steps_per_epoch
    pn_start = search.pn_start_step
    late = late_pn_warning(pn_start, total_steps, search.pn_batch_size, search.memory.average_every)
    if late:
        print(f"[pn-tf] warning: {late}", flush=True)
    callbacks = []
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        callbacks = standard_callbacks(workdir, "search",
                                       [GateChart(os.path.join(workdir, "tensorboard", "gates"))],
                                       update_freq=max(1, steps_per_epoch // 4))
    history = search.fit(train, epochs=config.search_epochs, validation_data=evaluation, callbacks=callbacks,
                         verbose=verbose, shuffle=False)  # the data shuffles itself
    if evaluation is not None:
        final = search.evaluate(evaluation, verbose=0, return_dict=True)
        threshold_ratio, accuracy = float(final["cost_ratio"]), float(final["accuracy"])
    else:
        threshold_ratio, accuracy = float(search.threshold_cost_ratio), None
    kept = search.deterministic_gates()
    warning = over_budget_warning(threshold_ratio, search.budget_ratio, knobs=config.knobs,
                                  budget=search.cost.name)
    if warning:
        print(f"[pn-tf] warning: {warning}", flush=True)
    for layer, flag in trainable:  # the search froze the network's weights
        layer.trainable = flag
    return {
        "predictor": config.predictor,
        "projection": config.projection,
        "p": search.p,
        "budget": search.cost.name,
        "budget_cost_ratio": search.budget_ratio,
        "threshold_cost_ratio": threshold_ratio,
        "reached_budget": warning is None,
        f"{eval_split}_accuracy_threshold_gates": accuracy,
        "threshold_widths": [int(k.sum()) for k in kept],
        "full_widths": search.widths,
        "epochs": config.search_epochs,
        "steps_per_epoch": steps_per_epoch,
        "memory_entries": int(search.memory.count.numpy()),
        "pn_start_step": pn_start,
        "recipe": {k: v for k, v in dataclasses.asdict(config).items() if k != "knobs"},
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "warnings": [w for w in (late, warning) if w],
    }
