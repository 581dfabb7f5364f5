"""The pipeline's stages, their order, their outputs and their checks.

Each stage reads what earlier stages wrote in the work directory and writes its own
sub-folder, ending with ``<stage>/<stage>.json`` (written last, atomically): a
stage whose JSON exists is finished and never redone. Interrupted training stages
resume from their epoch backups (``keras.callbacks.BackupAndRestore``).
"""

import dataclasses
import json
import math
import os
import sys
import time

STAGES = ("baseline", "search", "extract", "finetune", "export", "report")
CONFIG_KEYS_FIXED = ("arch", "dataset", "input_size", "num_classes", "target_flops_reduction", "seed")


class PipelineError(Exception):
    """A problem the user can fix: the message says what and how."""


@dataclasses.dataclass
class RunConfig:
    """Everything a run depends on, validated (see pn_tf/train.py for the flags)."""

    arch: str
    dataset: str
    workdir: str
    stages: list
    data_dir: str = None
    input_size: int = None
    num_classes: int = None
    seed: int = 0
    strategy: str = "default"
    cpu_replicas: int = 0
    train_take: int = None
    eval_take: int = None
    verbose: int = None  # None: a progress bar on a terminal, one line per epoch otherwise
    baseline_weights: str = ""
    baseline_init: str = ""
    baseline_epochs: int = 200
    baseline_lr: float = 0.1
    baseline_schedule: str = "step"
    batch_size: int = 128
    weight_decay: float = 1e-4
    precision: str = "float32"
    allow_precision_change: bool = False
    target_flops_reduction: float = 0.5
    p: float = None
    search_epochs: int = 200
    search_batch_size: int = 256
    predictor: str = "gru"
    projection: str = "always"
    pn_noise: float = 15.0
    gate_lr: float = 5e-2
    flops_reg_weight: float = 2.0
    pn_batch_size: int = 64
    search_take: int = None
    search_eval_split: str = "holdout"
    search_eval_take: int = None
    selection: str = "gates"
    round_to: object = 1  # an int >= 1, or "tile"
    finetune_epochs: int = 200
    finetune_lr: float = 0.1
    finetune_schedule: str = "step"
    tflite: list = dataclasses.field(default_factory=lambda: ["float32", "float16", "int8"])
    calibration_images: int = 512
    int8_calibration_repair: bool = True
    tflite_threads: int = 1
    tflite_runs: int = 100


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


class Pipeline:
    """Runs the stages of one work directory."""

    def __init__(self, config, strategy):
        self.config = config
        self.strategy = strategy
        self.workdir = os.path.abspath(config.workdir)

    # -- setup and validation ----------------------------------------------------

    @classmethod
    def from_flags(cls, flags):
        names = {f.name for f in dataclasses.fields(RunConfig)}
        values = {name: flags[name].value for name in names if name in flags}
        if not values.get("workdir"):
            raise PipelineError("--workdir is required: the folder that holds this run")
        config = RunConfig(**values)
        strategy = make_strategy(config.strategy, config.cpu_replicas)
        pipeline = cls(config, strategy)
        pipeline.validate()
        return pipeline

    def validate(self):
        """Every check that can fail before long work starts."""
        from pn_tf import data as data_lib
        from pn_tf.models import ARCHITECTURES

        c = self.config
        _check_finite(c)
        _check_workdir_path(c.workdir)
        if c.verbose is None:
            c.verbose = 1 if sys.stdout.isatty() else 2
        unknown = [s for s in c.stages if s not in STAGES]
        if unknown:
            raise PipelineError(f"unknown --stages {unknown}; choose from {', '.join(STAGES)}")
        c.stages = [s for s in STAGES if s in c.stages]
        if c.arch not in ARCHITECTURES:
            raise PipelineError(f"unknown --arch={c.arch}; known: {', '.join(sorted(ARCHITECTURES))}")
        try:
            spec = data_lib.get_spec(c.dataset)
            data_lib.num_examples(c.dataset, "holdout", c.data_dir)
        except (ValueError, FileNotFoundError) as err:
            raise PipelineError(str(err)) from err
        c.num_classes = c.num_classes or spec.num_classes
        c.input_size = c.input_size or spec.image_size
        c.round_to = _round_to(c.round_to)
        _positive(c, "baseline_epochs", "search_epochs", "batch_size", "search_batch_size",
                  "baseline_lr", "finetune_lr", "gate_lr", "flops_reg_weight", "calibration_images",
                  "tflite_threads", "tflite_runs", "pn_batch_size", "train_take", "eval_take", "search_take",
                  "finetune_epochs", "weight_decay", "pn_noise", "search_eval_take", allow_zero=("finetune_epochs", "weight_decay", "pn_noise"))
        if not 0.0 < c.target_flops_reduction < 1.0:
            raise PipelineError(f"--target_flops_reduction must be in (0, 1), got {c.target_flops_reduction}")
        from pn_tf.extract import SELECTIONS

        if c.selection not in SELECTIONS:
            raise PipelineError(f"unknown --selection={c.selection}; choose from {', '.join(SELECTIONS)}")
        if c.search_eval_split not in ("holdout", "test"):
            raise PipelineError(f"--search_eval_split must be holdout or test, got {c.search_eval_split}")
        bad = [q for q in c.tflite if q not in ("float32", "float16", "int8")]
        if bad:
            raise PipelineError(f"unknown --tflite variants {bad}; choose from float32, float16, int8")
        self._check_budget()
        self._check_baseline()
        self._check_workdir()
        self._check_resume()
        self._warn_precision()

    def _warn_precision(self):
        """mixed_bfloat16 on a CPU without bfloat16 instructions is emulated, several times slower."""
        from pn_tf.training import bfloat16_hardware

        c = self.config
        training = "finetune" in c.stages or ("baseline" in c.stages and not c.baseline_weights)
        if c.precision == "mixed_bfloat16" and training and bfloat16_hardware() is False:
            print("[pn-tf] warning: --precision=mixed_bfloat16 on a CPU without AMX/AVX512-BF16 "
                  "(no amx_bf16 or avx512_bf16 in /proc/cpuinfo): bfloat16 is emulated and "
                  "training is several times slower than --precision=float32 "
                  "(tools/bench_train_speed.py measures both)", flush=True)

    def _check_budget(self):
        from pn_tf.graph import FlopsModel

        c = self.config
        try:
            model = self.build_model()
        except ValueError as err:
            raise PipelineError(f"--arch={c.arch} cannot be built at --input_size={c.input_size}: {err}") from err
        flops = FlopsModel(model)
        try:
            p = c.p if c.p is not None else flops.p_for_reduction(c.target_flops_reduction)
        except ValueError as err:
            raise PipelineError(f"--target_flops_reduction={c.target_flops_reduction}: {err}") from err
        if not p > 0:
            raise PipelineError(f"--p must be > 0, got {c.p}")
        from pn_tf.extract.select import min_widths

        floor = flops.count(min_widths(flops.widths, c.round_to)) / flops.total
        if floor > 1.0 - c.target_flops_reduction:
            raise PipelineError(
                f"--round_to={c.round_to} cannot remove {c.target_flops_reduction:.0%} of the FLOPs: "
                f"the narrowest widths it allows still cost {floor:.1%} of the network; lower "
                "--target_flops_reduction or --round_to")
        self.flops_total = flops.total

    def _check_baseline(self):
        from pn_tf.baseline import CheckpointError, load_checked, resolve_weights

        c = self.config
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
                    load_checked(self.build_model(), path)
        except CheckpointError as err:
            raise PipelineError(str(err)) from err

    def _check_workdir(self):
        c = self.config
        path = os.path.join(self.workdir, "config.json")
        current = {k: getattr(c, k) for k in CONFIG_KEYS_FIXED}
        if os.path.exists(path):
            try:
                with open(path) as f:
                    previous = json.load(f)
            except (OSError, json.JSONDecodeError) as err:
                raise PipelineError(f"{path} is unreadable ({err}); remove it or use a new --workdir") from err
            changed = {k: (previous.get(k), v) for k, v in current.items() if previous.get(k) != v}
            if changed:
                raise PipelineError(
                    f"--workdir={c.workdir} holds a run with different settings "
                    f"{ {k: old for k, (old, new) in changed.items()} }; you asked for "
                    f"{ {k: new for k, (old, new) in changed.items()} }. Use a new --workdir or the same flags.")
        elif self.is_chief:
            from pn_tf.io import write_json

            write_json(path, {**dataclasses.asdict(c), **current})

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

    # -- helpers -----------------------------------------------------------------

    def build_model(self, **kwargs):
        from pn_tf import data as data_lib
        from pn_tf.models import build_model

        c = self.config
        with self.strategy.scope():
            return build_model(c.arch, input_size=c.input_size, num_classes=c.num_classes,
                               **data_lib.normalization_kwargs(c.dataset), **kwargs)

    def stage_dir(self, stage):
        path = os.path.join(self.workdir, stage)
        if not self.is_chief:
            path = os.path.join(self.workdir, ".workers", str(self.strategy.cluster_resolver.task_id), stage)
        os.makedirs(path, exist_ok=True)
        return path

    def summary_path(self, stage):
        return os.path.join(self.workdir, stage, f"{stage}.json")

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
        print(f"[pn-tf] {self.config.arch} on {self.config.dataset}, stages "
              f"{','.join(self.config.stages)}, workdir {self.workdir}", flush=True)
        for stage in self.config.stages:
            if os.path.exists(self.summary_path(stage)):
                print(f"[pn-tf] stage {stage}: already finished ({self.summary_path(stage)})", flush=True)
                continue
            print(f"[pn-tf] stage {stage}: starting", flush=True)
            start = time.time()
            from pn_tf import stages

            summary = getattr(stages, stage)(self)
            summary["stage_seconds"] = round(time.time() - start, 1)
            self.write_summary(stage, summary)
            print(f"[pn-tf] stage {stage}: done in {summary['stage_seconds']:.0f}s", flush=True)
