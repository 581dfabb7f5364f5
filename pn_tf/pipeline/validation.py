"""The run-level checks of a run's settings, before any stage: option limits and choices, the
model and data sources, sizes that follow the data, the work directory's pinned settings.
Each stage's own checks are its ``check(ctx)`` (:mod:`pn_tf.pipeline.stages`); the budget's
are its class's (:mod:`pn_tf.pipeline.budgets`). :meth:`pn_tf.pipeline.runner.Pipeline.validate`
calls them in order.
"""

import dataclasses
import json
import os

from pn_tf.pipeline import artifacts
from pn_tf.pipeline.config import OPTIONS
from pn_tf.pipeline.errors import PipelineError

# Settings that a work directory's earlier stages depend on: resuming with others is refused.
PINNED = tuple(o.name for o in OPTIONS if o.pins)


def check_workdir_path(workdir):
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise PipelineError(f"--workdir={workdir} is a file, not a folder; pass a folder (it is "
                            "created if missing)")


def round_to(value):
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


def check_options(config):
    """Every option's value within its declared limits and choices (finite numbers included)."""
    for option in OPTIONS:
        try:
            option.check(getattr(config, option.name, None))
        except ValueError as err:
            raise PipelineError(str(err)) from None


def _same(a, b):
    """Config values equal for resuming (unset, empty and missing are all "not given")."""
    empty = (None, "", [], ())
    return (a in empty and b in empty) or a == b


def resolve_sources(c):
    """``(model, data, changes)``: --arch/--model and --dataset/--image_dir resolved into a
    :class:`~pn_tf.pipeline.models.ZooModel` or ``FileModel``, a
    :class:`~pn_tf.data_sources.DataSource`, and the settings they decide."""
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
        if model.preprocessor_note:
            print(f"[pn-tf] warning: --model={c.model}: {model.preprocessor_note}", flush=True)
        elif c.input_range == "auto" and not model.starts_with_preprocessing:
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
        data = open_data(changes["dataset"], c.image_dir, c.test_dir, c.data_dir,
                         changes["input_range"], input_size)
    except DataSourceError as err:
        raise PipelineError(str(err)) from err
    if c.model:
        if model.num_classes != data.num_classes:
            raise PipelineError(
                f"--model={c.model} outputs {model.num_classes} class scores, but "
                f"{data.name} has {data.num_classes} classes; give the model a head of "
                f"{data.num_classes} classes (label k is the k-th sub-folder in sorted order)")
        changes["baseline_epochs"] = c.baseline_epochs or 0
    else:
        changes["num_classes"] = c.num_classes or data.num_classes
        input_size = input_size or data.image_size
        changes["baseline_epochs"] = 200 if c.baseline_epochs is None else c.baseline_epochs
        model = ZooModel(changes["arch"], input_size, changes["num_classes"], data.normalization)
    changes["input_size"] = input_size
    return model, data, changes


def fit_to_data(c, data):
    """Sizes left unset follow the data: each at its standard value (pn_tf.settings), or lower
    when a split holds fewer images (and the PN batch when the search is short); one line
    says what was lowered. A size the user set is kept (and refused later if it does not fit)."""
    from pn_tf import settings

    def count(split, take):
        n = data.count(split)
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


def warn_precision(c):
    """mixed_bfloat16 on a CPU without bfloat16 instructions is emulated, several times slower."""
    from pn_tf.pipeline.stages import baseline
    from pn_tf.training import bfloat16_hardware

    training = "finetune" in c.stages or ("baseline" in c.stages and baseline.trains(c))
    if c.precision == "mixed_bfloat16" and training and bfloat16_hardware() is False:
        print("[pn-tf] warning: --precision=mixed_bfloat16 on a CPU without AMX/AVX512-BF16 "
              "(no amx_bf16 or avx512_bf16 in /proc/cpuinfo): bfloat16 is emulated and "
              "training is several times slower than --precision=float32 "
              "(tools/bench_train_speed.py measures both)", flush=True)


def check_pins(c, workdir):
    """A work directory that holds a run with other pinned settings is refused."""
    path = os.path.join(workdir, artifacts.CONFIG)
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


def record_config(c, workdir):
    """A new work directory keeps the run's settings, once every check has passed (a refused
    run must not pin settings that a corrected retry would then be refused for)."""
    path = os.path.join(workdir, artifacts.CONFIG)
    if not os.path.exists(path):
        from pn_tf.io import write_json

        write_json(path, dataclasses.asdict(c))
