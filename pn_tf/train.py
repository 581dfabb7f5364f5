"""The pn-tf pipeline: data -> baseline -> PN search -> extraction -> fine-tuning -> export -> report.

    python -m pn_tf.train --flagfile=configs/quickstart.flags --workdir=runs/quickstart
    pn-tf --flagfile=configs/quickstart.flags --workdir=runs/quickstart    # the same, installed
    pn-tf --model=my_model.keras --image_dir=photos/ --target_flops_reduction=0.5 --workdir=runs/mine

The flags are declared once each: in :mod:`pn_tf.settings`, :mod:`pn_tf.pipeline.config`
(``--stages``) and by each budget kind (:mod:`pn_tf.pipeline.budgets`); ``--help`` lists them.

Everything of one run lives in ``--workdir``: one sub-folder per stage, each finished
stage marked by its ``<stage>.json``. Running the same command again skips finished
stages and resumes an interrupted one from its last epoch checkpoint (even after
SIGKILL). ``--stages`` runs a subset. Bad flags, missing data, impossible budgets and
unusable checkpoints stop the run before any long work, with a message saying what
to change. TensorBoard: ``tensorboard --logdir <workdir>``.
"""

import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from pn_tf.pipeline import Pipeline, PipelineError, define_flags  # noqa: E402

FLAGS = flags.FLAGS


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
    # An image folder's batches have no known count (unreadable files are dropped as read), so
    # Keras says "ran out of data" at the end of every evaluation pass; nothing is wrong.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
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
