"""Every setting of pn-tf that is not the pipeline's own, declared once: name, type, default,
help, choices and limits.

The pipeline turns each into a command-line flag and a field of its run config
(:mod:`pn_tf.pipeline.config` adds ``--stages`` and each budget kind's options, declared by
the kind in :mod:`pn_tf.pipeline.budgets`). The search recipe (:class:`pn_tf.search.SearchConfig`),
:func:`pn_tf.prune` and the tools take their defaults and choices from here (:func:`default`,
:data:`SELECTIONS`, ...). A leaf module: it imports nothing of pn_tf.
"""

import dataclasses
import math

TFLITE_VARIANTS = ("float32", "float16", "int8")
INPUT_RANGES = ("auto", "0_255", "0_1", "-1_1")
SELECTIONS = ("gates", "l1", "uniform", "random")  # how extraction ranks channels (pn_tf.extract)
PREDICTORS = ("gru", "bigru", "linear", "linear_scaled", "none")
PROJECTIONS = ("always", "conflict", "off")
SCHEDULES = ("step", "cosine", "constant")
# Where the quick API (pn_tf.prune, tools/autoprune.py) departs from the pipeline's search
# recipe: a search of minutes, not hours.
QUICK_SEARCH = {"search_epochs": 5, "search_batch_size": 64}


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting, declared once: it becomes an absl flag and a :class:`RunConfig` field.

    Attributes:
        kind: the flag type: "string", "integer", "float", "bool", "enum" or "list".
        choices: the allowed values of an "enum" (or of each item of a "list").
        low, high: limits of a number; ``closed`` names the ends that are allowed
            (``"low"``: ``value >= low``; else ``value > low``; ``high`` is always excluded).
            None: no limit.
        pins: a work directory's finished stages depend on it, so resuming with another
            value is refused.
        standard: for a size whose ``default`` is None ("follows the data"): the value used
            when the data allow it (the pipeline lowers it to fit a small split, and says so).
    """

    name: str
    kind: str
    default: object
    help: str
    choices: tuple = ()
    low: float = None
    high: float = None
    closed: str = ""
    pins: bool = False
    standard: object = None

    def check(self, value):
        """Raises a ValueError naming the flag when ``value`` breaks this option's limits or
        choices; None and the unset default pass (they mean "not given")."""
        if value is None:
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{self.name} must be a finite number, got {value}")
        if self.choices:
            values = value if self.kind == "list" else [value]
            bad = [v for v in values if v not in self.choices]
            if bad:
                raise ValueError(f"unknown --{self.name}={','.join(map(str, bad))}; choose from "
                                 f"{', '.join(map(str, self.choices))}")
        too_low = self.low is not None and (value < self.low or (value == self.low and self.closed != "low"))
        too_high = self.high is not None and value >= self.high
        if too_low or too_high:
            raise ValueError(f"--{self.name} must be {self.limits()}, got {value}")

    def limits(self):
        """The allowed range in words: "> 0", ">= 0" or "in (0, 1)"."""
        low = ">=" if self.closed == "low" else ">"
        if self.high is None:
            return f"{low} {self.low:g}"
        return f"in {'[' if self.closed == 'low' else '('}{self.low:g}, {self.high:g})"


def option(name, kind, default, help, choices=(), **limits):
    """An :class:`Option` (shorthand for the tables)."""
    return Option(name, kind, default, help, tuple(choices), **limits)


_o = option

OPTIONS = (
    # What to prune, on what.
    _o("arch", "string", "", "Zoo architecture (see pn_tf.models.ARCHITECTURES); default resnet56 "
       "unless --model is given.", pins=True),
    _o("model", "string", "", "Your own model: a .keras (or legacy .h5) file taking images and "
       "returning class scores (logits or softmax); replaces --arch. Its channel groups are found "
       "by the automatic analysis (--prune_policy, --exclude).", pins=True),
    _o("prune_policy", "enum", "all", "With --model: which channel spaces to prune: all (every one "
       "the analysis can) or internal (block-internal widths only, as the zoo declares).",
       ("all", "internal"), pins=True),
    _o("exclude", "list", [], "With --model: names of layers whose output channels stay whole.", pins=True),
    _o("dataset", "string", "", "TFDS dataset: cifar10, imagenette or imagenet2012; default cifar10 "
       "unless --image_dir is given.", pins=True),
    _o("image_dir", "string", "", "Your own images: a folder with one sub-folder of JPEG/PNG files "
       "per class; replaces --dataset. 10% of its files (chosen by a hash of each path, stable when "
       "files are added) are held out for the search and model selection.", pins=True),
    _o("test_dir", "string", "", "With --image_dir: a folder of the same classes whose accuracy is "
       "reported (never used to choose anything)."),
    _o("input_range", "enum", "auto", "Pixel range the model expects: 0_255, 0_1 or -1_1; auto is "
       "0_255 (what zoo models and models starting with a Rescaling or Normalization layer take).",
       INPUT_RANGES, pins=True),
    _o("data_dir", "string", None, "TFDS data dir (default: $TFDS_DATA_DIR, else TFDS's default)."),
    _o("workdir", "string", None, "Folder holding everything of this run."),
    _o("input_size", "integer", None, "Square input side (default: the dataset's, or the model's; "
       "needed for a --model that takes images of any size).", pins=True, low=0),
    _o("num_classes", "integer", None, "Classes of a zoo architecture (default: the dataset's).", pins=True, low=0),
    _o("seed", "integer", 0, "Seed of data order, augmentation and search noise.", pins=True),
    _o("strategy", "enum", "default", "tf.distribute strategy: default (one device), mirrored (all "
       "local GPUs, or CPUs with --cpu_replicas), multi_worker (hosts from TF_CONFIG).",
       ("default", "mirrored", "multi_worker")),
    _o("cpu_replicas", "integer", 0, "With --strategy=mirrored and no GPU: logical CPU devices.", low=0, closed="low"),
    _o("train_take", "integer", None, "Use only this many training images (smoke runs).", low=0),
    _o("eval_take", "integer", None, "Use only this many images per evaluation split.", low=0),
    _o("log_level", "enum", "warning", "Log messages shown: 'warning' (default) hides TensorFlow's "
       "and TFDS's INFO lines; 'info' or 'debug' brings them back.", ("debug", "info", "warning", "error")),
    _o("verbose", "integer", None, "Keras progress output: 0 silent, 1 a progress bar, 2 one line "
       "per epoch (default: 1 when stdout is a terminal, else 2)."),
    # Baseline.
    _o("baseline_weights", "string", "", "With --arch: '' trains a baseline, 'shipped' loads the one "
       "in pn_tf/pretrained, else a path to a .weights.h5 file of this architecture."),
    _o("baseline_init", "string", "", "With --arch: train the baseline starting from these weights "
       "('shipped' or a .weights.h5 path) instead of a random initialization."),
    _o("baseline_epochs", "integer", None, "Baseline training epochs (default: 200 for a zoo "
       "architecture trained from scratch; 0 for --model, whose own weights are evaluated as they "
       "are).", low=0, closed="low"),
    _o("baseline_lr", "float", 0.1, "Baseline peak learning rate (SGD, momentum 0.9).", low=0),
    _o("baseline_schedule", "enum", "step", "Baseline LR schedule.", SCHEDULES),
    _o("batch_size", "integer", None, "Batch size of baseline training and fine-tuning (default: "
       "128, or the training split's size when it holds fewer images).", low=0, standard=128),
    _o("weight_decay", "float", 1e-4, "PyTorch-style L2 weight decay (converted for Keras SGD).", low=0, closed="low"),
    _o("precision", "enum", "float32", "Compute precision of baseline training and fine-tuning: "
       "mixed_bfloat16 for CPUs with AMX/AVX512-BF16 (measure with tools/bench_train_speed.py), "
       "TPUs and recent GPUs; mixed_float16 for GPUs (loss-scaled). Weights, search, evaluation and "
       "export stay float32.", ("float32", "mixed_bfloat16", "mixed_float16")),
    _o("allow_precision_change", "bool", False, "Let an interrupted baseline or fine-tuning run "
       "resume in another --precision, float32 <-> mixed_bfloat16 only (same optimizer state); the "
       "change is recorded in the stage's summary."),
    # Search.
    _o("search_epochs", "integer", 200, "Search epochs over the held-out split.", low=0),
    _o("search_batch_size", "integer", None, "Search batch size (default: 256, or the held-out "
       "split's size when it holds fewer images).", low=0, standard=256),
    _o("predictor", "enum", "gru", "Performance predictor (linear: the supplement's LR; "
       "linear_scaled: LR with its input scaled by 1/sqrt(#gates), which does not saturate).",
       PREDICTORS),
    _o("projection", "enum", "always", "Gradient projection.", PROJECTIONS),
    _o("pn_noise", "float", 15.0, "Std of the noise on the PN's input (15 ResNet, 3 MobileNetV2).", low=0, closed="low"),
    _o("gate_lr", "float", 5e-2, "Gate AdamW learning rate (x0.1 after 80% of the search).", low=0),
    _o("flops_reg_weight", "float", 2.0, "w of the FLOPs regularizer w * log(max(T/T_total, p) / p) "
       "(METHOD.md item 4: 2; with --target_latency_reduction the same regularizer on the latency "
       "estimate L). Raise it when a short search ends above the budget (the search stage warns).", low=0),
    _o("pn_batch_size", "integer", None, "PN batch drawn from memory; the PN terms start once the "
       "memory holds this many entries (one per 2 steps). Default: 64, or fewer when the search "
       "is too short for the PN terms to act in its second half.", low=0, standard=64),
    _o("search_take", "integer", None, "Use only this many held-out images for the search.", low=0),
    _o("search_eval_split", "enum", "holdout", "Split on which the gated network is evaluated after "
       "every search epoch (test: the Figure-2 curves).", ("holdout", "test")),
    _o("search_eval_take", "integer", None, "Evaluate the search on only this many images.", low=0),
    # Extraction and fine-tuning.
    _o("selection", "enum", "gates", "How extraction ranks channels: the searched gates, or (no "
       "search) filter L1 norms, uniform width scaling, random channels.",
       SELECTIONS),
    _o("round_to", "string", "1", "Round kept widths to a multiple of this (e.g. 8; 32 for float32 "
       "latency on AVX-512 CPUs), or 'tile': per group the largest power of two <= min(32, group "
       "size / 2). See docs/latency.md."),
    _o("finetune_epochs", "integer", 200, "Fine-tuning epochs (0: none, the extracted model as is).", low=0, closed="low"),
    _o("finetune_lr", "float", 0.1, "Fine-tuning peak learning rate.", low=0),
    _o("finetune_schedule", "enum", "step", "Fine-tuning schedule.", SCHEDULES),
    # Export and report.
    _o("tflite", "list", list(TFLITE_VARIANTS), "TFLite variants to export.", TFLITE_VARIANTS),
    _o("calibration_images", "integer", None, "Training images for int8 calibration (default: "
       "512, or all of them when there are fewer).", low=0, standard=512),
    _o("int8_calibration_repair", "bool", True, "Repair int8 calibration ranges that TFLite widens "
       "for in-place ops (tensorflow/tensorflow#127842); see pn_tf/tflite/calibration.py."),
    _o("tflite_threads", "integer", 1, "Threads for the TFLite latency measurement.", low=0),
    _o("tflite_runs", "integer", 100, "Timed batch-1 runs per model for the latency.", low=0),
)

OPTION = {o.name: o for o in OPTIONS}  # name -> Option


def default(name):
    """The default of setting ``name`` (a list default is copied; a size that follows the data:
    its standard value)."""
    value = OPTION[name].default if OPTION[name].default is not None else OPTION[name].standard
    return list(value) if isinstance(value, list) else value
