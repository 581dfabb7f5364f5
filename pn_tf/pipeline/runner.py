"""The run context and the runner: validate everything, then run the stages in order.

Each stage (:mod:`pn_tf.pipeline.stages`) reads what earlier stages wrote in the work
directory and writes its own sub-folder; the runner writes ``<stage>/<stage>.json``
(:func:`pn_tf.pipeline.artifacts.summary_file`) last, atomically, once the stage
returned its summary: a stage whose JSON exists is finished and never redone.
Interrupted training stages resume from their epoch backups.
"""

import dataclasses
import json
import math
import os
import sys
import time

from pn_tf.pipeline import artifacts, budget
from pn_tf.pipeline.config import STAGES, TFLITE_VARIANTS, config_from_flags
from pn_tf.pipeline.errors import PipelineError

# Settings that a work directory's earlier stages depend on: resuming with others is refused.
CONFIG_KEYS_FIXED = ("arch", "model", "prune_policy", "exclude", "dataset", "image_dir", "input_range",
                     "input_size", "num_classes", "target_flops_reduction", "target_latency_reduction",
                     "seed")


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


def _positive(config, *names, allow_zero=()):
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if value < 0 or (value == 0 and name not in allow_zero):
            raise PipelineError(f"--{name} must be {'>= 0' if name in allow_zero else '> 0'}, got {value}")


def _check_finite(config):
    """Every number flag must be a finite number (``--finetune_lr=nan`` would fail stages later)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise PipelineError(f"--{field.name} must be a finite number, got {value}")


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
    """One run: its validated config, data, model, strategy and work directory.

    The stages receive this object as their run context; they read ``config``, ``data``
    (a :class:`pn_tf.data_sources.DataSource`), ``model`` (a
    :class:`pn_tf.pipeline.models.ZooModel` or ``FileModel``) and ``strategy``, and use
    the helpers below for files and summaries.
    """

    def __init__(self, config, strategy):
        self.config = config
        self.strategy = strategy
        self.workdir = os.path.abspath(config.workdir)
        self.data = self.model = None
        self.baseline_source = self.baseline_init_source = None
        self.latency_table = None  # the table of a latency budget, once validated

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
        """Every check that can fail before long work starts."""
        c = self.config
        _check_finite(c)
        _check_workdir_path(c.workdir)
        if c.verbose is None:
            c.verbose = 1 if sys.stdout.isatty() else 2
        unknown = [s for s in c.stages if s not in STAGES]
        if unknown:
            raise PipelineError(f"unknown --stages {unknown}; choose from {', '.join(STAGES)}")
        c.stages = [s for s in STAGES if s in c.stages]
        self._check_sources()
        c.round_to = _round_to(c.round_to)
        _positive(c, "baseline_epochs", "search_epochs", "batch_size", "search_batch_size",
                  "baseline_lr", "finetune_lr", "gate_lr", "flops_reg_weight", "calibration_images",
                  "tflite_threads", "tflite_runs", "pn_batch_size", "train_take", "eval_take", "search_take",
                  "finetune_epochs", "weight_decay", "pn_noise", "search_eval_take",
                  allow_zero=("baseline_epochs", "finetune_epochs", "weight_decay", "pn_noise"))
        from pn_tf.extract import SELECTIONS

        if c.selection not in SELECTIONS:
            raise PipelineError(f"unknown --selection={c.selection}; choose from {', '.join(SELECTIONS)}")
        if c.search_eval_split == "test" and not self.data.has_test:
            raise PipelineError("--search_eval_split=test needs a test split: pass --test_dir")
        bad = [q for q in c.tflite if q not in TFLITE_VARIANTS]
        if bad:
            raise PipelineError(f"unknown --tflite variants {bad}; choose from {', '.join(TFLITE_VARIANTS)}")
        self._check_split_sizes()
        self._check_budget()
        self._check_baseline()
        self._check_workdir()
        self._check_resume()
        self._warn_precision()
        self._check_latency_budget()
        self._record_config()

    def _check_sources(self):
        """Resolves --arch/--model and --dataset/--image_dir into ``self.model`` and ``self.data``."""
        from pn_tf.data_sources import DataSourceError, open_data
        from pn_tf.models import ARCHITECTURES
        from pn_tf.pipeline.models import FileModel, ZooModel

        c = self.config
        if c.model and c.arch:
            raise PipelineError(f"pass --model (your own model) or --arch (a zoo architecture), not "
                                f"both (got --model={c.model} --arch={c.arch})")
        if c.image_dir and c.dataset:
            raise PipelineError(f"pass --image_dir (your own images) or --dataset (TFDS), not both "
                                f"(got --image_dir={c.image_dir} --dataset={c.dataset})")
        c.dataset = "" if c.image_dir else (c.dataset or "cifar10")
        if c.model:
            zoo_only = [f"--{name}" for name in ("baseline_weights", "baseline_init", "num_classes")
                        if getattr(c, name)]
            if zoo_only:
                raise PipelineError(f"{', '.join(zoo_only)} go with --arch; --model's file holds its "
                                    "own weights and classes (retrain it with --baseline_epochs)")
            model = FileModel(c.model, c.prune_policy, c.exclude, c.input_size)
            c.input_size = model.input_size
            if c.input_range == "auto" and not model.starts_with_preprocessing:
                print(f"[pn-tf] warning: --model={c.model} does not start with a Rescaling or "
                      "Normalization layer; pn-tf feeds it pixels 0..255. If it expects another "
                      "range, pass --input_range=0_1 or -1_1", flush=True)
        else:
            c.arch = c.arch or "resnet56"
            if c.arch not in ARCHITECTURES:
                raise PipelineError(f"unknown --arch={c.arch}; known: {', '.join(sorted(ARCHITECTURES))}")
            given = [f"--{name}" for name in ("exclude",) if getattr(c, name)]
            if c.prune_policy != "all":
                given.append("--prune_policy")
            if given:
                raise PipelineError(f"{', '.join(given)} go with --model; a zoo architecture "
                                    "declares its channel groups")
            if c.input_range not in ("auto", "0_255"):
                raise PipelineError(f"--input_range={c.input_range}: zoo architectures take pixels "
                                    "0..255 and normalize them themselves; leave it out")
        c.input_range = "0_255" if c.input_range == "auto" else c.input_range
        try:
            self.data = open_data(c.dataset, c.image_dir, c.test_dir, c.data_dir, c.input_range,
                                  c.input_size)
        except DataSourceError as err:
            raise PipelineError(str(err)) from err
        if c.model:
            if model.num_classes != self.data.num_classes:
                raise PipelineError(
                    f"--model={c.model} outputs {model.num_classes} class scores, but "
                    f"{self.data.name} has {self.data.num_classes} classes; give the model a head of "
                    f"{self.data.num_classes} classes (label k is the k-th sub-folder in sorted order)")
            c.baseline_epochs = c.baseline_epochs or 0
        else:
            c.num_classes = c.num_classes or self.data.num_classes
            c.input_size = c.input_size or self.data.image_size
            c.baseline_epochs = 200 if c.baseline_epochs is None else c.baseline_epochs
            model = ZooModel(c.arch, c.input_size, c.num_classes, self.data.normalization)
        self.model = model

    def _check_split_sizes(self):
        """Training drops partial batches: each training split needs one full batch at least."""
        c = self.config
        needs = []
        if "search" in c.stages and c.selection == "gates":
            needs.append(("holdout", c.search_take, c.search_batch_size, "--search_batch_size"))
        if "finetune" in c.stages and c.finetune_epochs or "baseline" in c.stages and self.trains_baseline:
            needs.append(("train_main", c.train_take, c.batch_size, "--batch_size"))
        for split, take, batch, flag in needs:
            count = self.data.count(split)
            count = min(count, take) if take else count
            if count < batch:
                raise PipelineError(f"the {split} split of {self.data.name} has {count} images, fewer "
                                    f"than {flag}={batch}: lower {flag} or add images")

    def _warn_precision(self):
        """mixed_bfloat16 on a CPU without bfloat16 instructions is emulated, several times slower."""
        from pn_tf.training import bfloat16_hardware

        c = self.config
        training = "finetune" in c.stages or ("baseline" in c.stages and self.trains_baseline)
        if c.precision == "mixed_bfloat16" and training and bfloat16_hardware() is False:
            print("[pn-tf] warning: --precision=mixed_bfloat16 on a CPU without AMX/AVX512-BF16 "
                  "(no amx_bf16 or avx512_bf16 in /proc/cpuinfo): bfloat16 is emulated and "
                  "training is several times slower than --precision=float32 "
                  "(tools/bench_train_speed.py measures both)", flush=True)

    @property
    def trains_baseline(self):
        c = self.config
        return not c.baseline_weights and c.baseline_epochs > 0

    def _check_budget(self):
        c = self.config
        budget.check_flags(c)
        try:
            network = self.build_network()
        except ValueError as err:
            raise PipelineError(f"--arch={c.arch} cannot be built at --input_size={c.input_size}: {err}") from err
        self.flops_total = budget.check_flops(c, network).total

    def _check_latency_budget(self):
        """Loads (or builds, and caches) the latency table; refuses a target it cannot reach."""
        c = self.config
        if c.target_latency_reduction is not None and {"search", "extract"} & set(c.stages):
            self.latency_table = budget.latency_table(c, self.build_network(), self.workdir,
                                                      self.model.name, self.is_chief)

    def cost_model(self, graph):
        """What the search regularizes and extraction selects on: the FLOPs T(a), or L(a)."""
        return budget.cost_model(self.config, graph, self.latency_table)

    @property
    def target_reduction(self):
        """The budget's fraction to remove: of the latency when one is asked, else of the FLOPs."""
        return budget.target_reduction(self.config)

    def _check_baseline(self):
        from pn_tf.checkpoints import CheckpointError, load_checked, resolve_weights

        c = self.config
        if c.model:
            return
        try:
            if c.baseline_weights and c.baseline_init:
                raise CheckpointError(
                    "--baseline_weights loads a finished baseline and --baseline_init starts training "
                    "from one; pass only one of them")
            self.baseline_source = resolve_weights(c.baseline_weights, c.arch, c.dataset)
            self.baseline_init_source = resolve_weights(c.baseline_init, c.arch, c.dataset,
                                                        flag="baseline_init")
            for path in (self.baseline_source, self.baseline_init_source):
                if path:
                    load_checked(self.build_network(), path)
        except CheckpointError as err:
            raise PipelineError(str(err)) from err

    def _check_workdir(self):
        c = self.config
        path = os.path.join(self.workdir, artifacts.CONFIG)
        current = {k: getattr(c, k) for k in CONFIG_KEYS_FIXED}
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

    def _check_resume(self):
        """An interrupted training stage must resume in the precision it started with."""
        from pn_tf.training import ResumeError, check_resume_precision

        for stage in ("baseline", "finetune"):
            if stage in self.config.stages and not os.path.exists(self.summary_path(stage)):
                try:
                    check_resume_precision(self.stage_dir(stage), self.config.precision, stage,
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
        """The gated network with ``weights`` loaded (None: its initial weights)."""
        from pn_tf.checkpoints import load_checked

        network = self.build_network()
        return load_checked(network, weights) if weights else network

    def load_keras(self, path):
        """A ``.keras`` file an earlier stage wrote."""
        import keras

        import pn_tf.layers  # noqa: F401  (registers the custom layers)

        if not os.path.exists(path):
            raise PipelineError(f"{path} is missing; rerun the stage that writes it")
        with self.strategy.scope():
            return keras.saving.load_model(path, compile=False)

    def images(self, split="holdout", count=64):
        """The first ``count`` images of ``split`` as one array (for equivalence checks)."""
        ds = self.data.batches(split, count, training=False, image_size=self.config.input_size, take=count)
        return next(iter(ds))[0].numpy()

    def batches(self, split, batch_size, training=False, take=None, seed=0):
        """``self.data.batches`` at the run's input size."""
        return self.data.batches(split, batch_size, training, image_size=self.config.input_size,
                                 seed=seed, take=take)

    def stage_dir(self, stage):
        path = os.path.join(self.workdir, stage)
        if not self.is_chief:
            path = os.path.join(self.workdir, ".workers", str(self.strategy.cluster_resolver.task_id), stage)
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
        from pn_tf.pipeline.stages import STAGE_MODULES

        print(f"[pn-tf] {self.title}, stages {','.join(self.config.stages)}, workdir {self.workdir}",
              flush=True)
        for stage in self.config.stages:
            if os.path.exists(self.summary_path(stage)):
                print(f"[pn-tf] stage {stage}: already finished ({self.summary_path(stage)})", flush=True)
                continue
            print(f"[pn-tf] stage {stage}: starting", flush=True)
            start = time.time()
            summary = STAGE_MODULES[stage].run(self)
            summary["stage_seconds"] = round(time.time() - start, 1)
            self.write_summary(stage, summary)
            print(f"[pn-tf] stage {stage}: done in {summary['stage_seconds']:.0f}s", flush=True)
