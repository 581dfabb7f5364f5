"""The pipeline on every coverage row: each row of tools/coverage.py's table saved as a user's
.keras classifier, with a generated image folder, through `python -m pn_tf.train` under a
FLOPs and a latency budget (pn_tf/coverage/pipeline.py does the work).

    python tools/coverage_pipeline.py --out_dir=runs/coverage_pipeline   # every row, both budgets
    python tools/coverage_pipeline.py --rows=sequential_cnn --budgets=flops --timeout_s=900
    python tools/coverage_pipeline.py --markdown_only   # rewrite the page from the cached results

Each (row, budget) result is cached as JSON under --out_dir/results: a second start runs only
what is missing. Rows run in sweep order (user patterns, then keras.applications smallest
first). Writes --markdown (generated; rows without a result say "not run") and --summary_json.
Exit status: 0, or 2 on bad flags.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import pn_tf  # noqa: E402,F401 -- first, so TensorFlow starts with pn-tf's defaults
from pn_tf.coverage import pipeline  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", [], "coverage rows to run (default: every row of tools/coverage.py's table)")
flags.DEFINE_list("budgets", ["flops", "latency"], "budgets to run: flops, latency")
flags.DEFINE_string("out_dir", "runs/coverage_pipeline", "cache of results, inputs and workdirs")
flags.DEFINE_string("markdown", "docs/coverage_pipeline.md", "the generated page ('' for none)")
flags.DEFINE_string("summary_json", "docs/coverage_pipeline.json",
                    "the cached results in one small JSON file ('' for none)")
flags.DEFINE_integer("timeout_s", 900, "wall-clock limit of one pipeline run")
flags.DEFINE_list("retry", [], "rerun cached results with these statuses (e.g. timeout,failed)")
flags.DEFINE_bool("markdown_only", False, "run nothing: write the page from the cached results")


def _all_rows():
    from tools.coverage import rows_to_run

    return [name for name, _, _ in rows_to_run()]


def write_outputs(rows, budgets, results, argv):
    from pn_tf.io import atomic_path

    line = "python tools/coverage_pipeline.py " + " ".join(sys.argv[1:])  # absl strips flags from argv
    if FLAGS.markdown:
        with atomic_path(FLAGS.markdown) as tmp:
            with open(tmp, "w") as f:
                f.write(pipeline.markdown(rows, budgets, results, line.strip(), out_dir=FLAGS.out_dir))
    if FLAGS.summary_json:
        with atomic_path(FLAGS.summary_json) as tmp:
            with open(tmp, "w") as f:
                json.dump(pipeline.summary_json(rows, budgets, results), f, indent=1, sort_keys=True)
                f.write("\n")


def main(argv):
    known = _all_rows()
    unknown = sorted(set(FLAGS.rows) - set(known))
    bad_budgets = sorted(set(FLAGS.budgets) - set(pipeline.BUDGETS))
    bad_retry = sorted(set(FLAGS.retry) - set(pipeline.STATUSES))
    problems = []
    if unknown:
        problems.append(f"unknown rows {', '.join(unknown)} (known: {', '.join(known)})")
    if bad_budgets or not FLAGS.budgets:
        problems.append(f"--budgets takes flops and/or latency, got {','.join(FLAGS.budgets) or 'nothing'}")
    if bad_retry:
        problems.append(f"--retry takes statuses among {', '.join(pipeline.STATUSES)}, got {', '.join(bad_retry)}")
    if problems:
        print("coverage_pipeline: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    rows = pipeline.sweep_order(FLAGS.rows or known)
    budgets = [b for b in pipeline.BUDGETS if b in FLAGS.budgets]
    if FLAGS.markdown_only:
        results = pipeline.load_results(FLAGS.out_dir)
    else:
        def progress(line):
            print(f"[coverage_pipeline] {line}", file=sys.stderr, flush=True)

        def run(row, budget, out_dir, **kwargs):
            result = pipeline.run_one(row, budget, out_dir, **kwargs)
            results_so_far[(row, budget)] = result
            write_outputs(rows, budgets, results_so_far, argv)  # the page follows the sweep
            return result

        results_so_far = pipeline.load_results(FLAGS.out_dir)
        results = pipeline.sweep(rows, budgets, FLAGS.out_dir, run=run, retry=tuple(FLAGS.retry),
                                 progress=progress, timeout_s=FLAGS.timeout_s)
    write_outputs(rows, budgets, results, argv)
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
