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

from pn_tf.pipeline import artifacts
from pn_tf.pipeline.budgets import budget_of
from pn_tf.pipeline.config import OPTIONS, config_from_flags
from pn_tf.pipeline.errors import PipelineError
from pn_tf.pipeline.stages import BY_NAME, STAGE_NAMES

# Settings that a work directory's earlier stages depend on: resuming with others is refused.
PINNED = tuple(o.name for o in OPTIONS if o.pins)


def _check_workdir_path(workdir):
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise PipelineError(f"--workdir={workdir} is a file, not a folder; pass a folder (it is "
                            "created if missing)")


def _round_to(value):
    """``--round_to``: "tile" or a positive integer (given as int or string)."""
    if value == "tile":
        return value
    try:
        multiple = int(value)
    except (TypeError, ValueError):
        raise PipelineError(f"--round_to must be a positive integer or 'tile', got {value!r}") from None
    if multiple < 1:
        raise PipelineError(f"--round_to must be > 0, got {multiple}")
    return multiple


def _check_options(config):
    """Every option's value within its declared limits and choices (finite numbers included)."""
    for option in OPTIONS:
        try:
            option.check(getattr(config, option.name, None))
        except ValueError as err:
            raise PipelineError(str(err)) from None


def check_tf_config(text):
    """Parses ``TF_CONFIG`` or raises a PipelineError saying what is wrong with it."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise PipelineError(f"TF_CONFIG is not valid JSON ({err}); it should look like "
                            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                            '"task": {"type": "worker", "index": 0}}') from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise PipelineError("TF_CONFIG needs a 'cluster' with at least one job and this host's 'task', "
                            '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": 0}}')
    jobs = cluster.get(task.get("type"))
    if not isinstance(jobs, list) or not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(jobs):
        raise PipelineError(f"TF_CONFIG's task {task} does not name one of its cluster's hosts {cluster}")
    return config


def make_strategy(name, cpu_replicas=0):
    """The tf.distribute strategy for ``--strategy`` (created before other TF work)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise PipelineError("--strategy=multi_worker needs TF_CONFIG describing the cluster "
                                "(see https://www.tensorflow.org/guide/distributed_training)")
        check_tf_config(os.environ["TF_CONFIG"])
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    if cpu_replicas < 2:
        raise PipelineError("--strategy=mirrored found no GPU; pass --cpu_replicas=N (N >= 2) "
                            "to mirror over N logical CPU devices")
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])



def _same(a, b):
    """Config values equal for resuming (unset, empty and missing are all "not given")."""
    empty = (None, "", [], ())
    return (a in empty and b in empty) or a == b


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
        _check_options(c)
        if not c.workdir:
            raise PipelineError("--workdir is required: the folder that holds this run")
        _check_workdir_path(c.workdir)
        changes = self._check_sources(c)
        changes.update(self._fit_to_data(c))
        changes.update(
            stages=[s for s in STAGE_NAMES if s in c.stages], round_to=_round_to(c.round_to),
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
        self._check_workdir()
        self._warn_precision()
        self.budget.check(network, self)
        self._record_config()

    def _check_sources(self, c):
        """Resolves --arch/--model and --dataset/--image_dir into ``self.model`` and ``self.data``;
        the settings they decide."""
        from pn_tf.data_sources import DataSourceError, open_data
        from pn_tf.models import ARCHITECTURES
        from pn_tf.pipeline.models import FileModel, ZooModel

        if c.model and c.arch:
            raise PipelineError(f"pass --model (your own model) or --arch (a zoo architecture), not "
                                f"both (got --model={c.model} --arch={c.arch})")
        if c.image_dir and c.dataset:
            raise PipelineError(f"pass --image_dir (your own images) or --dataset (TFDS), not both "
                                f"(got --image_dir={c.image_dir} --dataset={c.dataset})")
        changes = {"dataset": "" if c.image_dir else (c.dataset or "cifar10")}
        input_size = c.input_size
        if c.model:
            zoo_only = [f"--{name}" for name in ("baseline_weights", "baseline_init", "num_classes")
                        if getattr(c, name)]
            if zoo_only:
                raise PipelineError(f"{', '.join(zoo_only)} go with --arch; --model's file holds its "
                                    "own weights and classes (retrain it with --baseline_epochs)")
            model = FileModel(c.model, c.prune_policy, c.exclude, c.input_size)
            input_size = model.input_size
            if c.input_range == "auto" and not model.starts_with_preprocessing:
                print(f"[pn-tf] warning: --model={c.model} does not start with a Rescaling or "
                      "Normalization layer; pn-tf feeds it pixels 0..255. If it expects another "
                      "range, pass --input_range=0_1 or -1_1", flush=True)
        else:
            changes["arch"] = c.arch or "resnet56"
            if changes["arch"] not in ARCHITECTURES:
                raise PipelineError(f"unknown --arch={changes['arch']}; known: "
                                    f"{', '.join(sorted(ARCHITECTURES))}")
            given = [f"--{name}" for name in ("exclude",) if getattr(c, name)]
            if c.prune_policy != "all":
                given.append("--prune_policy")
            if given:
                raise PipelineError(f"{', '.join(given)} go with --model; a zoo architecture "
                                    "declares its channel groups")
            if c.input_range not in ("auto", "0_255"):
                raise PipelineError(f"--input_range={c.input_range}: zoo architectures take pixels "
                                    "0..255 and normalize them themselves; leave it out")
        changes["input_range"] = "0_255" if c.input_range == "auto" else c.input_range
        try:
            self.data = open_data(changes["dataset"], c.image_dir, c.test_dir, c.data_dir,
                                  changes["input_range"], input_size)
        except DataSourceError as err:
            raise PipelineError(str(err)) from err
        if c.model:
            if model.num_classes != self.data.num_classes:
                raise PipelineError(
                    f"--model={c.model} outputs {model.num_classes} class scores, but "
                    f"{self.data.name} has {self.data.num_classes} classes; give the model a head of "
                    f"{self.data.num_classes} classes (label k is the k-th sub-folder in sorted order)")
            changes["baseline_epochs"] = c.baseline_epochs or 0
        else:
            changes["num_classes"] = c.num_classes or self.data.num_classes
            input_size = input_size or self.data.image_size
            changes["baseline_epochs"] = 200 if c.baseline_epochs is None else c.baseline_epochs
            model = ZooModel(changes["arch"], input_size, changes["num_classes"], self.data.normalization)
        changes["input_size"] = input_size
        self.model = model
        return changes

    def _fit_to_data(self, c):
        """Sizes left unset follow the data: each at its standard value (pn_tf.settings), or lower
        when a split holds fewer images (and the PN batch when the search is short); one line
        says what was lowered. A size the user set is kept (and refused later if it does not fit)."""
        from pn_tf import settings

        def count(split, take):
            n = self.data.count(split)
            return min(n, take) if take else n

        chosen, lowered = {}, []

        def choose(name, fits, why):
            standard = settings.OPTION[name].standard
            if getattr(c, name) is not None:
                return getattr(c, name)
            chosen[name] = max(1, min(standard, fits))
            if chosen[name] < standard:
                lowered.append(f"--{name}={chosen[name]} ({why})")
            return chosen[name]

        train_main, holdout = count("train_main", c.train_take), count("holdout", c.search_take)
        choose("batch_size", train_main, f"the training split has {train_main} images")
        search_batch = choose("search_batch_size", holdout, f"the held-out split has {holdout} images")
        steps = c.search_epochs * max(1, holdout // search_batch)
        # The PN terms start once the memory holds --pn_batch_size entries, one per 2 steps: a PN
        # batch of at most steps / 4 starts them by the middle of the search.
        choose("pn_batch_size", max(2, steps // 4), f"the search has {steps} steps")
        train = count("train", c.train_take)
        choose("calibration_images", train, f"the training images number {train}")
        if lowered:
            print(f"[pn-tf] sizes that fit the data: {', '.join(lowered)}; pass a flag to choose "
                  "another", flush=True)
        return chosen

    def check_split(self, split, take, batch, flag):
        """Training drops partial batches: ``split`` (at most ``take`` images) needs one full batch
        of ``batch`` (set by ``flag``)."""
        count = self.data.count(split)
        count = min(count, take) if take else count
        if count < batch:
            raise PipelineError(f"the {split} split of {self.data.name} has {count} images, fewer "
                                f"than {flag}={batch}: lower {flag} or add images")

    def _warn_precision(self):
        """mixed_bfloat16 on a CPU without bfloat16 instructions is emulated, several times slower."""
        from pn_tf.pipeline.stages import baseline
        from pn_tf.training import bfloat16_hardware

        c = self.config
        training = "finetune" in c.stages or ("baseline" in c.stages and baseline.trains(c))
        if c.precision == "mixed_bfloat16" and training and bfloat16_hardware() is False:
            print("[pn-tf] warning: --precision=mixed_bfloat16 on a CPU without AMX/AVX512-BF16 "
                  "(no amx_bf16 or avx512_bf16 in /proc/cpuinfo): bfloat16 is emulated and "
                  "training is several times slower than --precision=float32 "
                  "(tools/bench_train_speed.py measures both)", flush=True)

    def cost_model(self, graph):
        """What the search regularizes and extraction selects on, for the run's budget."""
        return self.budget.cost_model(graph)

    @property
    def target_reduction(self):
        """The budget's fraction to remove."""
        return self.budget.reduction

    def _check_workdir(self):
        c = self.config
        path = os.path.join(self.workdir, artifacts.CONFIG)
        current = {k: getattr(c, k) for k in PINNED}
        if os.path.exists(path):
            try:
                with open(path) as f:
                    previous = json.load(f)
            except (OSError, json.JSONDecodeError) as err:
                raise PipelineError(f"{path} is unreadable ({err}); remove it or use a new --workdir") from err
            changed = {k: (previous.get(k), v) for k, v in current.items()
                       if not _same(previous.get(k), v) and (k in previous or v not in (None, "", []))}
            if changed:
                raise PipelineError(
                    f"--workdir={c.workdir} holds a run with different settings "
                    f"{ {k: old for k, (old, new) in changed.items()} }; you asked for "
                    f"{ {k: new for k, (old, new) in changed.items()} }. Use a new --workdir or the same flags.")

    def _record_config(self):
        """A new work directory keeps the run's settings, once every check has passed (a refused
        run must not pin settings that a corrected retry would then be refused for)."""
        path = os.path.join(self.workdir, artifacts.CONFIG)
        if self.is_chief and not os.path.exists(path):
            from pn_tf.io import write_json

            write_json(path, dataclasses.asdict(self.config))

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
