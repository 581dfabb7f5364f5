"""The pipeline's settings, declared once: each is a command-line flag and a RunConfig field.

``OPTIONS`` is the single list; :func:`define_flags` turns it into absl flags and
:class:`RunConfig` into a dataclass with the same names and defaults, so a setting
added here exists in both, with one help text.
"""

import dataclasses

STAGES = ("baseline", "search", "extract", "finetune", "export", "report")
TFLITE_VARIANTS = ("float32", "float16", "int8")
INPUT_RANGES = ("auto", "0_255", "0_1", "-1_1")


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its flag type ("string", "integer", "float", "bool", "enum", "list")."""

    name: str
    kind: str
    default: object
    help: str
    choices: tuple = ()


def _o(name, kind, default, help, choices=()):
    return Option(name, kind, default, help, tuple(choices))


OPTIONS = (
    # What to prune, on what.
    _o("arch", "string", "", "Zoo architecture (see pn_tf.models.ARCHITECTURES); default resnet56 "
       "unless --model is given."),
    _o("model", "string", "", "Your own model: a .keras (or legacy .h5) file taking images and "
       "returning class scores (logits or softmax); replaces --arch. Its channel groups are found "
       "by the automatic analysis (--prune_policy, --exclude)."),
    _o("prune_policy", "enum", "all", "With --model: which channel spaces to prune: all (every one "
       "the analysis can) or internal (block-internal widths only, as the zoo declares).",
       ("all", "internal")),
    _o("exclude", "list", [], "With --model: names of layers whose output channels stay whole."),
    _o("dataset", "string", "", "TFDS dataset: cifar10, imagenette or imagenet2012; default cifar10 "
       "unless --image_dir is given."),
    _o("image_dir", "string", "", "Your own images: a folder with one sub-folder of JPEG/PNG files "
       "per class; replaces --dataset. 10% of its files (chosen by a hash of each path, stable when "
       "files are added) are held out for the search and model selection."),
    _o("test_dir", "string", "", "With --image_dir: a folder of the same classes whose accuracy is "
       "reported (never used to choose anything)."),
    _o("input_range", "enum", "auto", "Pixel range the model expects: 0_255, 0_1 or -1_1; auto is "
       "0_255 (what zoo models and models starting with a Rescaling or Normalization layer take).",
       INPUT_RANGES),
    _o("data_dir", "string", None, "TFDS data dir (default: $TFDS_DATA_DIR, else TFDS's default)."),
    _o("workdir", "string", None, "Folder holding everything of this run."),
    _o("stages", "list", list(STAGES), f"Stages to run, in order, from {', '.join(STAGES)}."),
    _o("input_size", "integer", None, "Square input side (default: the dataset's, or the model's; "
       "needed for a --model that takes images of any size)."),
    _o("num_classes", "integer", None, "Classes of a zoo architecture (default: the dataset's)."),
    _o("seed", "integer", 0, "Seed of data order, augmentation and search noise."),
    _o("strategy", "enum", "default", "tf.distribute strategy: default (one device), mirrored (all "
       "local GPUs, or CPUs with --cpu_replicas), multi_worker (hosts from TF_CONFIG).",
       ("default", "mirrored", "multi_worker")),
    _o("cpu_replicas", "integer", 0, "With --strategy=mirrored and no GPU: logical CPU devices."),
    _o("train_take", "integer", None, "Use only this many training images (smoke runs)."),
    _o("eval_take", "integer", None, "Use only this many images per evaluation split."),
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
       "are)."),
    _o("baseline_lr", "float", 0.1, "Baseline peak learning rate (SGD, momentum 0.9)."),
    _o("baseline_schedule", "enum", "step", "Baseline LR schedule.", ("step", "cosine", "constant")),
    _o("batch_size", "integer", 128, "Batch size of baseline training and fine-tuning."),
    _o("weight_decay", "float", 1e-4, "PyTorch-style L2 weight decay (converted for Keras SGD)."),
    _o("precision", "enum", "float32", "Compute precision of baseline training and fine-tuning: "
       "mixed_bfloat16 for CPUs with AMX/AVX512-BF16 (measure with tools/bench_train_speed.py), "
       "TPUs and recent GPUs; mixed_float16 for GPUs (loss-scaled). Weights, search, evaluation and "
       "export stay float32.", ("float32", "mixed_bfloat16", "mixed_float16")),
    _o("allow_precision_change", "bool", False, "Let an interrupted baseline or fine-tuning run "
       "resume in another --precision, float32 <-> mixed_bfloat16 only (same optimizer state); the "
       "change is recorded in the stage's summary."),
    # Search.
    _o("target_flops_reduction", "float", 0.5, "Fraction of FLOPs to remove."),
    _o("target_latency_reduction", "float", None, "Fraction of the TFLite batch-1 latency to remove "
       "instead of a FLOPs count: the search regularizes and extraction selects on the latency "
       "estimate L(a) of a measured latency table (--latency_table); the report measures the "
       "result. See docs/latency_budgets.md."),
    _o("latency_dtype", "enum", "float32", "With --target_latency_reduction: the TFLite model whose "
       "latency is budgeted and measured (int8 needs int8 in --tflite).", ("float32", "int8")),
    _o("latency_table", "string", "", "With --target_latency_reduction: a table from "
       "tools/latency_model.py --output (built on the deployment device); default: built here at "
       "the start of the run (LiteRT, XNNPACK, --tflite_threads), cached, and copied into the "
       "workdir."),
    _o("p", "float", None, "Regularizer bound p directly (the paper's Table 1); overrides the target "
       "for the search; extraction still lands on --target_flops_reduction."),
    _o("search_epochs", "integer", 200, "Search epochs over the held-out split."),
    _o("search_batch_size", "integer", 256, "Search batch size."),
    _o("predictor", "enum", "gru", "Performance predictor (linear: the supplement's LR; "
       "linear_scaled: LR with its input scaled by 1/sqrt(#gates), which does not saturate).",
       ("gru", "bigru", "linear", "linear_scaled", "none")),
    _o("projection", "enum", "always", "Gradient projection.", ("always", "conflict", "off")),
    _o("pn_noise", "float", 15.0, "Std of the noise on the PN's input (15 ResNet, 3 MobileNetV2)."),
    _o("gate_lr", "float", 5e-2, "Gate AdamW learning rate (x0.1 after 80% of the search)."),
    _o("flops_reg_weight", "float", 2.0, "w of the FLOPs regularizer w * log(max(T/T_total, p) / p) "
       "(METHOD.md item 4: 2; with --target_latency_reduction the same regularizer on the latency "
       "estimate L). Raise it when a short search ends above the budget (the search stage warns)."),
    _o("pn_batch_size", "integer", 64, "PN batch drawn from memory; the PN terms start once the "
       "memory holds this many entries (one per 2 steps)."),
    _o("search_take", "integer", None, "Use only this many held-out images for the search."),
    _o("search_eval_split", "enum", "holdout", "Split on which the gated network is evaluated after "
       "every search epoch (test: the Figure-2 curves).", ("holdout", "test")),
    _o("search_eval_take", "integer", None, "Evaluate the search on only this many images."),
    # Extraction and fine-tuning.
    _o("selection", "enum", "gates", "How extraction ranks channels: the searched gates, or (no "
       "search) filter L1 norms, uniform width scaling, random channels.",
       ("gates", "l1", "uniform", "random")),
    _o("round_to", "string", "1", "Round kept widths to a multiple of this (e.g. 8; 32 for float32 "
       "latency on AVX-512 CPUs), or 'tile': per group the largest power of two <= min(32, group "
       "size / 2). See docs/latency.md."),
    _o("finetune_epochs", "integer", 200, "Fine-tuning epochs (0: none, the extracted model as is)."),
    _o("finetune_lr", "float", 0.1, "Fine-tuning peak learning rate."),
    _o("finetune_schedule", "enum", "step", "Fine-tuning schedule.", ("step", "cosine", "constant")),
    # Export and report.
    _o("tflite", "list", list(TFLITE_VARIANTS), "TFLite variants to export."),
    _o("calibration_images", "integer", 512, "Training images for int8 calibration."),
    _o("int8_calibration_repair", "bool", True, "Repair int8 calibration ranges that TFLite widens "
       "for in-place ops (tensorflow/tensorflow#127842); see pn_tf/export.py."),
    _o("tflite_threads", "integer", 1, "Threads for the TFLite latency measurement."),
    _o("tflite_runs", "integer", 100, "Timed batch-1 runs per model for the latency."),
)

_DEFINE = {"string": "DEFINE_string", "integer": "DEFINE_integer", "float": "DEFINE_float",
           "bool": "DEFINE_bool", "enum": "DEFINE_enum", "list": "DEFINE_list"}


def define_flags(flag_values=None):
    """Defines every option as an absl flag on ``flag_values`` (the global FLAGS by default)."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    for option in OPTIONS:
        define = getattr(flags, _DEFINE[option.kind])
        default = list(option.default) if option.kind == "list" else option.default
        if option.kind == "enum":
            define(option.name, default, list(option.choices), option.help, flag_values=flag_values)
        else:
            define(option.name, default, option.help, flag_values=flag_values)


def _field(option):
    if isinstance(option.default, list):
        return dataclasses.field(default_factory=lambda d=option.default: list(d))
    return dataclasses.field(default=option.default)


RunConfig = dataclasses.make_dataclass(
    "RunConfig", [(o.name, object, _field(o)) for o in OPTIONS if o.name != "log_level"],
    namespace={"__doc__": "Every setting of a run (pn_tf.pipeline.config.OPTIONS), validated by "
                          "Pipeline.validate."})
RunConfig.__module__ = __name__


def config_from_flags(flag_values):
    """A RunConfig from parsed absl flags."""
    return RunConfig(**{f.name: flag_values[f.name].value for f in dataclasses.fields(RunConfig)
                        if f.name in flag_values})
