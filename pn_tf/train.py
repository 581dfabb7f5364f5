"""The pn-tf pipeline: data -> baseline -> PN search -> extraction -> fine-tuning -> export -> report.

    python -m pn_tf.train --flagfile=configs/quickstart.flags --workdir=runs/quickstart
    pn-tf --flagfile=configs/quickstart.flags --workdir=runs/quickstart    # the same, installed

Everything of one run lives in ``--workdir``: one sub-folder per stage, each finished
stage marked by its ``<stage>.json``. Running the same command again skips finished
stages and resumes an interrupted one from its last epoch checkpoint (even after
SIGKILL). ``--stages`` runs a subset. Bad flags, missing data, impossible budgets and
unusable checkpoints stop the run before any long work, with a message saying what
to change. TensorBoard: ``tensorboard --logdir <workdir>``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from pn_tf.pipeline import STAGES, Pipeline, PipelineError  # noqa: E402

FLAGS = flags.FLAGS

def define_flags(flag_values=flags.FLAGS):
    """Defines the pipeline's flags on ``flag_values`` (the global FLAGS by default)."""
    fv = {"flag_values": flag_values}
    # Run.
    flags.DEFINE_string("arch", "resnet56", "Architecture (see pn_tf.models.ARCHITECTURES).", **fv)
    flags.DEFINE_string("dataset", "cifar10", "Dataset: cifar10, imagenette or imagenet2012.", **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR, else TFDS's default).", **fv)
    flags.DEFINE_string("workdir", None, "Folder holding everything of this run.", **fv)
    flags.DEFINE_list("stages", list(STAGES), f"Stages to run, in order, from {', '.join(STAGES)}.", **fv)
    flags.DEFINE_integer("input_size", None, "Square input side (default: the dataset's).", **fv)
    flags.DEFINE_integer("seed", 0, "Seed of data order, augmentation and search noise.", **fv)
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                      "tf.distribute strategy: default (one device), mirrored (all local GPUs, or "
                      "CPUs with --cpu_replicas), multi_worker (hosts from TF_CONFIG).", **fv)
    flags.DEFINE_integer("cpu_replicas", 0, "With --strategy=mirrored and no GPU: logical CPU devices.", **fv)
    flags.DEFINE_integer("train_take", None, "Use only this many training images (smoke runs).", **fv)
    flags.DEFINE_integer("eval_take", None, "Use only this many images per evaluation split.", **fv)
    flags.DEFINE_enum("log_level", "warning", ["debug", "info", "warning", "error"],
                      "Log messages shown: 'warning' (default) hides TensorFlow's and TFDS's INFO "
                      "lines; 'info' or 'debug' brings them back.", **fv)
    flags.DEFINE_integer("verbose", None, "Keras progress output: 0 silent, 1 a progress bar, 2 one "
                         "line per epoch (default: 1 when stdout is a terminal, else 2).", **fv)

    # Baseline.
    flags.DEFINE_string("baseline_weights", "", "'' trains a baseline, 'shipped' loads the one in "
                        "pn_tf/pretrained, else a path to a .weights.h5 file of this architecture.", **fv)
    flags.DEFINE_string("baseline_init", "", "Train the baseline starting from these weights ('shipped' "
                        "or a .weights.h5 path) instead of a random initialization, e.g. a warm "
                        "restart of a shipped baseline with a new schedule.", **fv)
    flags.DEFINE_integer("baseline_epochs", 200, "Baseline training epochs.", **fv)
    flags.DEFINE_float("baseline_lr", 0.1, "Baseline peak learning rate (SGD, momentum 0.9).", **fv)
    flags.DEFINE_enum("baseline_schedule", "step", ["step", "cosine", "constant"], "Baseline LR schedule.", **fv)
    flags.DEFINE_integer("batch_size", 128, "Batch size of baseline training and fine-tuning.", **fv)
    flags.DEFINE_float("weight_decay", 1e-4, "PyTorch-style L2 weight decay (converted for Keras SGD).", **fv)
    flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                      "Compute precision of baseline training and fine-tuning: mixed_bfloat16 for "
                      "CPUs with AMX/AVX512-BF16 (ResNet-56 ~1.7x faster than float32 on a Xeon with "
                      "AMX, depthwise-heavy MobileNetV2 slower; 7x slower where bfloat16 is "
                      "emulated: measure with "
                      "tools/bench_train_speed.py), TPUs and recent GPUs; mixed_float16 for GPUs "
                      "(loss-scaled). Weights, search, evaluation and export stay float32.", **fv)
    flags.DEFINE_bool("allow_precision_change", False, "Let an interrupted baseline or fine-tuning "
                      "run resume in another --precision, float32 <-> mixed_bfloat16 only (same "
                      "optimizer state), e.g. after moving to a CPU without bfloat16 instructions; "
                      "the change is recorded in the stage's summary.", **fv)

    # Search.
    flags.DEFINE_float("target_flops_reduction", 0.5, "Fraction of FLOPs to remove.", **fv)
    flags.DEFINE_float("p", None, "Regularizer bound p directly (the paper's Table 1); overrides the "
                       "target for the search; extraction still lands on --target_flops_reduction.", **fv)
    flags.DEFINE_integer("search_epochs", 200, "Search epochs over the held-out split.", **fv)
    flags.DEFINE_integer("search_batch_size", 256, "Search batch size.", **fv)
    flags.DEFINE_enum("predictor", "gru", ["gru", "bigru", "linear", "linear_scaled", "none"],
                      "Performance predictor (linear: the supplement's LR; linear_scaled: LR with its "
                      "input scaled by 1/sqrt(#gates), which does not saturate).", **fv)
    flags.DEFINE_enum("projection", "always", ["always", "conflict", "off"], "Gradient projection.", **fv)
    flags.DEFINE_float("pn_noise", 15.0, "Std of the noise on the PN's input (15 ResNet, 3 MobileNetV2).", **fv)
    flags.DEFINE_float("gate_lr", 5e-2, "Gate AdamW learning rate.", **fv)
    flags.DEFINE_float("flops_reg_weight", 2.0, "w of the FLOPs regularizer w * log(max(T/T_total, p) / p) "
                       "(METHOD.md item 4: 2, with the reference code's further factor 2 on top). Raise "
                       "it when a short search ends above the FLOPs budget (search.json's "
                       "threshold_flops_ratio; the search stage warns).", **fv)
    flags.DEFINE_integer("pn_batch_size", 64, "PN batch drawn from memory; the PN terms start once "
                         "the memory holds this many entries (one per 2 steps).", **fv)
    flags.DEFINE_integer("search_take", None, "Use only this many held-out images for the search.", **fv)
    flags.DEFINE_enum("search_eval_split", "holdout", ["holdout", "test"], "Split on which the gated "
                      "network is evaluated after every search epoch (test: the Figure-2 curves).", **fv)
    flags.DEFINE_integer("search_eval_take", None, "Evaluate the search on only this many images.", **fv)

    # Extraction and fine-tuning.
    flags.DEFINE_enum("selection", "gates", ["gates", "l1", "uniform", "random"],
                      "How extraction ranks channels: the searched gates, or (no search) filter "
                      "L1 norms, uniform width scaling, random channels.", **fv)
    flags.DEFINE_string("round_to", "1",
                        "Round kept widths to a multiple of this (e.g. 8; 32 for float32 latency "
                        "on AVX-512 CPUs), or 'tile': per group the largest power of two <= "
                        "min(32, group size / 2). See docs/latency.md.", **fv)
    flags.DEFINE_integer("finetune_epochs", 200, "Fine-tuning epochs.", **fv)
    flags.DEFINE_float("finetune_lr", 0.1, "Fine-tuning peak learning rate.", **fv)
    flags.DEFINE_enum("finetune_schedule", "step", ["step", "cosine", "constant"], "Fine-tuning schedule.", **fv)

    # Export and report.
    flags.DEFINE_list("tflite", ["float32", "float16", "int8"], "TFLite variants to export.", **fv)
    flags.DEFINE_integer("calibration_images", 512, "Training images for int8 calibration.", **fv)
    flags.DEFINE_bool("int8_calibration_repair", True, "Repair int8 calibration ranges that "
                      "TFLite widens for in-place ops (tensorflow/tensorflow#127842); see "
                      "pn_tf/export.py.", **fv)
    flags.DEFINE_integer("tflite_threads", 1, "Threads for the TFLite latency measurement.", **fv)
    flags.DEFINE_integer("tflite_runs", 100, "Timed batch-1 runs per model for the latency.", **fv)


def set_log_level(level):
    """Python-side log verbosity (absl, TensorFlow, TFDS) and, before TensorFlow loads, its C++ one.

    TensorFlow's C++ code logs a few lines while it loads, before its logging is set up, which
    no setting hides (abseil/abseil-cpp#1957); everything after that follows ``level``.
    """
    import logging as py_logging

    logging.set_verbosity(level)
    py_logging.getLogger("tensorflow").setLevel(level.upper())
    if "tensorflow" not in sys.modules:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if level in ("debug", "info") else "2"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    set_log_level(FLAGS.log_level)
    try:
        pipeline = Pipeline.from_flags(FLAGS)
        pipeline.run()
    except PipelineError as err:
        logging.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run():
    """The ``pn-tf`` console command: the same flags as ``python -m pn_tf.train``."""
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
