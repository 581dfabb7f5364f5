"""Search: learn the gates with PN (METHOD.md) on the held-out split, resumably, on the run's
budget (its cost model and target)."""

import os

from pn_tf.pipeline import artifacts
from pn_tf.pipeline.errors import PipelineError
from pn_tf.pipeline.stages.baseline import weights_of


def check(ctx):
    """One full search batch in the held-out split; a test split to evaluate on when asked."""
    c = ctx.config
    if c.selection != "gates":
        return
    if c.search_eval_split == "test" and not ctx.data.has_test:
        raise PipelineError("--search_eval_split=test needs a test split: pass --test_dir")
    ctx.check_split("holdout", c.search_take, c.search_batch_size, "--search_batch_size")


def run(ctx):
    from pn_tf.graph import ChannelGraph
    from pn_tf.io import atomic_path
    from pn_tf.search import SearchConfig, run_search
    from pn_tf.training import resume_seed

    c = ctx.config
    if c.selection != "gates":
        print(f"[pn-tf] stage search: skipped, --selection={c.selection} ranks channels without a search",
              flush=True)
        return {"skipped": True, "selection": c.selection, "weights": weights_of(ctx)}
    network = ctx.load_network(weights_of(ctx))
    workdir = ctx.stage_dir("search")
    cost = ctx.budget.cost_model(ChannelGraph(network))
    config = SearchConfig.of(c, target_reduction=ctx.budget.reduction, p=ctx.budget.p(cost))
    train = ctx.batches("holdout", c.search_batch_size, training=True, take=c.search_take,
                        seed=resume_seed(workdir, c.seed))
    evaluation = ctx.batches(c.search_eval_split, 256, take=c.search_eval_take or c.eval_take)
    summary = run_search(network, train, config, evaluation=evaluation, workdir=workdir,
                         strategy=ctx.strategy, verbose=c.verbose, eval_split=c.search_eval_split,
                         cost=cost)
    path = os.path.join(workdir, artifacts.SEARCHED_WEIGHTS)
    with atomic_path(path) as tmp:
        network.save_weights(tmp)
    summary["weights"] = ctx.relative(path)
    return summary
