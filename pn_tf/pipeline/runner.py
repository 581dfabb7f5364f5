"""The run context and the runner: validate everything, then run the stages in order.

Validation checks every option against its declared limits and choices, resolves the model,
the data and the budget, asks each stage to be run for its own checks (``check(ctx)``), and
leaves a frozen, normalized config. Each stage (:mod:`pn_tf.pipeline.stages`) reads what
earlier stages wrote in the work directory and writes its own sub-folder; the runner writes
``<stage>/<stage>.json`` (:func:`pn_tf.pipeline.artifacts.summary_file`) last, atomically,
once the stage returned its summary: a stage whose JSON exists is finished and never redone.
Interrupted training stages resume from their epoch backups.
"""

import dataclasses
import json
import os
import sys
import time

from pn_tf.pipeline import artifacts, validation
from pn_tf.pipeline.budgets import budget_of
from pn_tf.pipeline.config import config_from_flags
from pn_tf.pipeline.errors import PipelineError
from pn_tf.pipeline.stages import BY_NAME, STAGE_NAMES
from pn_tf.pipeline.strategy import make_strategy


class Pipeline:
    """One run: its validated config, budget, data, model, strategy and work directory.

    The stages receive this object as their run context; they read ``config`` (frozen once
    validated), ``budget`` (a :class:`pn_tf.pipeline.budgets.Budget`), ``data`` (a
    :class:`pn_tf.data_sources.DataSource`), ``model`` (a :class:`pn_tf.pipeline.models.ZooModel`
    or ``FileModel``) and ``strategy``, and use the helpers below for files and summaries.
    """

    stage_names = STAGE_NAMES  # every stage, in order (pn_tf.pipeline.stages)

    def __init__(self, config, strategy):
        self.config = config
        self.strategy = strategy
        self.workdir = os.path.abspath(config.workdir) if config.workdir else None
        self.data = self.model = self.budget = None

    # -- setup and validation ----------------------------------------------------

    @classmethod
    def from_flags(cls, flags):
        config = config_from_flags(flags)
        if not config.workdir:
            raise PipelineError("--workdir is required: the folder that holds this run")
        pipeline = cls(config, make_strategy(config.strategy, config.cpu_replicas))
        pipeline.validate()
        return pipeline

    def validate(self):
        """Every check that can fail before long work starts; leaves ``self.config`` frozen and
        normalized (defaults that depend on the model or data filled in)."""
        c = self.config
        validation.check_options(c)
        if not c.workdir:
            raise PipelineError("--workdir is required: the folder that holds this run")
        validation.check_workdir_path(c.workdir)
        self.model, self.data, changes = validation.resolve_sources(c)
        changes.update(validation.fit_to_data(dataclasses.replace(c, **changes), self.data))
        changes.update(
            stages=[s for s in STAGE_NAMES if s in c.stages], round_to=validation.round_to(c.round_to),
            verbose=(1 if sys.stdout.isatty() else 2) if c.verbose is None else c.verbose)
        self.config = c = dataclasses.replace(c, **changes)
        self.budget = budget_of(c)
        self.budget.check_flags()
        try:
            network = self.build_network()
        except ValueError as err:
            raise PipelineError(f"--arch={c.arch} cannot be built at --input_size={c.input_size}: {err}") from err
        for stage in c.stages:
            BY_NAME[stage].check(self)
        validation.check_pins(c, self.workdir)
        validation.warn_precision(c)
        self.budget.check(network, self)
        if self.is_chief:
            validation.record_config(c, self.workdir)

    def check_split(self, split, take, batch, flag):
        """Training drops partial batches: ``split`` (at most ``take`` images) needs one full batch
        of ``batch`` (set by ``flag``)."""
        count = self.data.count(split)
        count = min(count, take) if take else count
        if count < batch:
            raise PipelineError(f"the {split} split of {self.data.name} has {count} images, fewer "
                                f"than {flag}={batch}: lower {flag} or add images")

    def cost_model(self, graph):
        """What the search regularizes and extraction selects on, for the run's budget."""
        return self.budget.cost_model(graph)

    @property
    def target_reduction(self):
        """The budget's fraction to remove."""
        return self.budget.reduction

    def check_resume(self, stage):
        """An interrupted training stage must resume in the precision it started with."""
        from pn_tf.training import ResumeError, check_resume_precision

        if os.path.exists(self.summary_path(stage)):
            return
        try:
            check_resume_precision(self._stage_path(stage), self.config.precision, stage,
                                   self.config.allow_precision_change)
        except ResumeError as err:
            raise PipelineError(str(err)) from err

    @property
    def is_chief(self):
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or not getattr(resolver, "task_type", None):
            return True
        return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0)

    # -- helpers for the stages ----------------------------------------------------

    @property
    def title(self):
        """``<model> on <data>`` for messages and the report."""
        return f"{self.model.name} on {self.data.name}"

    def build_network(self):
        """The gated network (identity gates) with its initial weights, in the strategy's scope."""
        with self.strategy.scope():
            return self.model.build()

    def load_network(self, weights):
        """The gated network with ``weights`` (a path, relative to the workdir or not; None: its
        initial weights) loaded."""
        from pn_tf.checkpoints import load_checked

        network = self.build_network()
        return load_checked(network, self.path(weights)) if weights else network

    def load_keras(self, path):
        """A ``.keras`` file an earlier stage wrote (``path`` relative to the workdir or not)."""
        import keras

        import pn_tf.layers  # noqa: F401  (registers the custom layers)

        path = self.path(path)
        if not os.path.exists(path):
            raise PipelineError(f"{path} is missing; rerun the stage that writes it")
        with self.strategy.scope():
            return keras.saving.load_model(path, compile=False)

    def path(self, path):
        """A path as a summary stores it (relative to the workdir, or absolute) made usable."""
        return None if path is None else os.path.join(self.workdir, path)

    def relative(self, path):
        """How a summary stores ``path``: relative to the workdir when inside it, else absolute
        (so a work directory can be moved or copied whole)."""
        if path is None:
            return None
        path = os.path.abspath(path)
        inside = os.path.commonpath([path, self.workdir]) == self.workdir
        return os.path.relpath(path, self.workdir) if inside else path

    def images(self, split="holdout", count=64):
        """The first ``count`` images of ``split`` as one array (for equivalence checks)."""
        ds = self.data.batches(split, count, training=False, image_size=self.config.input_size, take=count)
        return next(iter(ds))[0].numpy()

    def batches(self, split, batch_size, training=False, take=None, seed=0):
        """``self.data.batches`` at the run's input size."""
        return self.data.batches(split, batch_size, training, image_size=self.config.input_size,
                                 seed=seed, take=take)

    def _stage_path(self, stage):
        if self.is_chief:
            return os.path.join(self.workdir, stage)
        return os.path.join(self.workdir, ".workers", str(self.strategy.cluster_resolver.task_id), stage)

    def stage_dir(self, stage):
        """The stage's folder, created (a worker of a multi-worker run gets its own)."""
        path = self._stage_path(stage)
        os.makedirs(path, exist_ok=True)
        return path

    def summary_path(self, stage):
        return artifacts.summary_file(self.workdir, stage)

    def summary(self, stage):
        path = self.summary_path(stage)
        if not os.path.exists(path):
            raise PipelineError(f"stage '{stage}' has not finished in {self.workdir}: run it first "
                                f"(add it to --stages)")
        with open(path) as f:
            return json.load(f)

    def write_summary(self, stage, summary):
        from pn_tf.io import write_json

        if self.is_chief:
            write_json(self.summary_path(stage), summary)

    def train(self, model, stage):
        """Trains ``model`` in place by the ``--<stage>_*`` recipe on the run's data; its summary."""
        from pn_tf.training import train_and_evaluate

        c = self.config
        return train_and_evaluate(model, self.data, self.stage_dir(stage), self.train_config(stage), stage,
                                  batch_size=c.batch_size, seed=c.seed, take=c.train_take,
                                  eval_take=c.eval_take, verbose=c.verbose)

    def train_config(self, prefix):
        from pn_tf.training import TrainConfig, cosine_warmup_epochs

        c = self.config
        epochs = max(1, getattr(c, f"{prefix}_epochs"))
        cosine = getattr(c, f"{prefix}_schedule") == "cosine"
        return TrainConfig(epochs=epochs, learning_rate=getattr(c, f"{prefix}_lr"),
                           weight_decay=c.weight_decay, schedule=getattr(c, f"{prefix}_schedule"),
                           warmup_epochs=cosine_warmup_epochs(epochs) if cosine else 0,
                           precision=c.precision, allow_precision_change=c.allow_precision_change)

    # -- running -------------------------------------------------------------------

    def run(self):
        print(f"[pn-tf] {self.title}, stages {','.join(self.config.stages)}, workdir {self.workdir}",
              flush=True)
        for stage in self.config.stages:
            if os.path.exists(self.summary_path(stage)):
                print(f"[pn-tf] stage {stage}: already finished ({self.summary_path(stage)})", flush=True)
                continue
            print(f"[pn-tf] stage {stage}: starting", flush=True)
            start = time.time()
            summary = BY_NAME[stage].run(self)
            summary["stage_seconds"] = round(time.time() - start, 1)
            self.write_summary(stage, summary)
            print(f"[pn-tf] stage {stage}: done in {summary['stage_seconds']:.0f}s", flush=True)
        # The run ends with its answer: the headline of the last finished stage that has one.
        for stage in reversed(self.config.stages):
            module = BY_NAME[stage]
            if hasattr(module, "headline") and os.path.exists(self.summary_path(stage)):
                print("\n".join(module.headline(self)), flush=True)
                break
