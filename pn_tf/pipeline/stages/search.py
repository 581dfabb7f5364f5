"""Search: learn the gates with PN (METHOD.md) on the held-out split, resumably, on the run's
FLOPs or latency budget (``ctx.cost_model``)."""

import os

from pn_tf.pipeline import artifacts
from pn_tf.pipeline.stages.baseline import weights_of


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
    config = SearchConfig.of(c)
    train = ctx.batches("holdout", c.search_batch_size, training=True, take=c.search_take,
                        seed=resume_seed(workdir, c.seed))
    evaluation = ctx.batches(c.search_eval_split, 256, take=c.search_eval_take or c.eval_take)
    summary = run_search(network, train, config, evaluation=evaluation, workdir=workdir,
                         strategy=ctx.strategy, verbose=c.verbose, eval_split=c.search_eval_split,
                         cost=ctx.cost_model(ChannelGraph(network)))
    path = os.path.join(workdir, artifacts.SEARCHED_WEIGHTS)
    with atomic_path(path) as tmp:
        network.save_weights(tmp)
    summary["weights"] = path
    return summary
