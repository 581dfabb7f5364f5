"""Prune any Keras model with pn-tf's automatic channel-dependency analysis.

Two modes:

* Check a keras.applications architecture (random weights, no data):

    python tools/autoprune.py --keras_application=MobileNetV2 --input_size=96 \\
        --target_flops_reduction=0.5 --json

  builds ``keras.applications.NAME(weights=None)``, finds its channel groups,
  inserts gates, sets random gate logits, extracts at the target and compares
  the narrow model with the gated one (hard 0/1 masks) on random inputs.

* Prune a saved model with the PN search:

    python tools/autoprune.py --model=net.keras --dataset=cifar10 \\
        --target_flops_reduction=0.5 --output=net_pruned.keras --search_epochs=5
    python tools/autoprune.py --model=net.keras --image_dir=photos/ ...

Exit status: 0 on success, 2 on bad arguments or missing files.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pn_tf  # noqa: E402,F401 -- first, so TensorFlow starts with pn-tf's defaults (oneDNN on)


def _parser():
    from pn_tf import settings
    from pn_tf.pipeline.budgets.flops import FlopsBudget

    quick = settings.QUICK_SEARCH
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--keras_application", help="name in keras.applications, e.g. ResNet50")
    src.add_argument("--model", help="path of a saved .keras functional model")
    p.add_argument("--input_size", type=int, default=224, help="square input side (applications)")
    p.add_argument("--classes", type=int, default=10, help="classifier size (applications)")
    p.add_argument("--target_flops_reduction", type=float, default=FlopsBudget.target.default)
    p.add_argument("--policy", default=settings.default("prune_policy"),
                   choices=settings.OPTION["prune_policy"].choices)
    p.add_argument("--round_to", type=lambda v: v if v == "tile" else int(v), default=1,
                   help="kept-width multiple: an integer, or 'tile' (per group, see docs/latency.md)")
    p.add_argument("--seed", type=int, default=settings.default("seed"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--dataset", help="TFDS name for the search (its holdout split)")
    data.add_argument("--image_dir", help="folder of class sub-folders of images")
    p.add_argument("--data_dir", default=None, help="TFDS data directory")
    p.add_argument("--output", help="where to save the pruned .keras model")
    p.add_argument("--search_epochs", type=int, default=quick["search_epochs"])
    p.add_argument("--batch_size", type=int, default=quick["search_batch_size"])
    p.add_argument("--flops_reg_weight", type=float, default=settings.default("flops_reg_weight"),
                   help="w of the FLOPs regularizer; raise it if the search ends above the budget")
    p.add_argument("--predictor", default=settings.default("predictor"), choices=settings.PREDICTORS)
    p.add_argument("--take", type=int, default=None, help="use only this many examples")
    return p


def _fail(message):
    print(f"autoprune: error: {message}", file=sys.stderr)
    return 2


def check_application(name, input_size, target, classes=10, seed=0, policy="all", round_to=1):
    """The JSON report of the keras.applications check (see the module docstring).

    Raises KeyError for a name keras.applications does not have.
    """
    import keras

    from pn_tf.coverage.check import check_model, randomize_batchnorm
    from pn_tf.coverage.models import application

    keras.utils.set_random_seed(seed)
    model = randomize_batchnorm(application(name, input_size, classes), seed)
    report = check_model(model, target, seed=seed, policy=policy, round_to=round_to, tflite=False)
    return dict(report, application=name, input_size=input_size)


def main(argv=None):
    args = _parser().parse_args(argv)
    if not 0.0 < args.target_flops_reduction < 1.0:
        return _fail(f"--target_flops_reduction must be in (0, 1), got {args.target_flops_reduction}")
    if args.keras_application:
        try:
            report = check_application(args.keras_application, args.input_size,
                                       args.target_flops_reduction, classes=args.classes,
                                       seed=args.seed, policy=args.policy, round_to=args.round_to)
        except KeyError:
            return _fail(f"keras.applications has no architecture named {args.keras_application!r}")
        if args.json:
            print(json.dumps(report))
        else:
            for key in ("application", "groups", "flops", "pruned_flops", "flops_reduction", "params",
                        "pruned_params", "max_abs_diff"):
                print(f"{key}: {report[key]}")
            for message in report["warnings"]:
                print(f"warning: {message}")
        return 0

    if not (args.dataset or args.image_dir):
        return _fail("--model needs --dataset or --image_dir for the search")
    if not args.output:
        return _fail("--model needs --output for the pruned model")
    from pn_tf import auto
    from pn_tf.image_folder import ImageFolderError, scan
    from pn_tf.io import atomic_path
    from pn_tf.model_file import ModelFileError, load_model

    try:
        if args.image_dir:
            scan(args.image_dir, check=False)  # the layout; unreadable files are skipped later
        model = load_model(args.model)
    except (ImageFolderError, ModelFileError) as err:
        return _fail(str(err))
    pruned, summary = auto.prune(
        model, args.image_dir or args.dataset, target_flops_reduction=args.target_flops_reduction,
        search_epochs=args.search_epochs, batch_size=args.batch_size, predictor=args.predictor,
        data_dir=args.data_dir, round_to=args.round_to, policy=args.policy, take=args.take,
        seed=args.seed, flops_reg_weight=args.flops_reg_weight, verbose=0 if args.json else 2,
        return_summary=True)
    with atomic_path(args.output) as tmp:
        pruned.save(tmp)
    summary["output"] = os.path.abspath(args.output)
    summary.pop("search_history", None)
    if args.json:
        print(json.dumps(summary))
    else:
        for key in ("groups", "flops", "pruned_flops", "flops_reduction", "params", "pruned_params", "output"):
            print(f"{key}: {summary[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
