"""The FLOPs budget (``--target_flops_reduction``, the default): remove a fraction of the MACs,
counted exactly by :class:`~pn_tf.graph.FlopsModel` (METHOD.md items 3-4)."""

from pn_tf.pipeline.budgets.base import Budget
from pn_tf.pipeline.errors import PipelineError
from pn_tf.settings import option


class FlopsBudget(Budget):
    kind = "flops"
    default = True
    target = option("target_flops_reduction", "float", 0.5, "Fraction of FLOPs (MACs) to remove.",
                    low=0.0, high=1.0, pins=True)
    options = (
        option("p", "float", None, "Regularizer bound p directly (the paper's Table 1); overrides the "
               "target for the search; extraction still lands on --target_flops_reduction.", low=0.0),
    )

    def check(self, network, run):
        """A target the network (and ``--round_to``) can reach, and a positive p."""
        from pn_tf.extract.select import min_widths
        from pn_tf.graph import FlopsModel

        flops = FlopsModel(network)
        try:
            self.p(flops)
        except ValueError as err:
            raise PipelineError(f"--target_flops_reduction={self.reduction}: {err}") from err
        round_to = self.config.round_to
        floor = flops.count(min_widths(flops.widths, round_to)) / flops.total
        if floor > 1.0 - self.reduction:
            raise PipelineError(
                f"--round_to={round_to} cannot remove {self.reduction:.0%} of the FLOPs: the "
                f"narrowest widths it allows still cost {floor:.1%} of the network (layers outside "
                "the prunable groups included); lower --target_flops_reduction or --round_to")

    def cost_model(self, graph):
        from pn_tf.graph import FlopsModel

        return FlopsModel(graph)

    def p(self, cost_model):
        return self.config.p if self.config.p is not None else cost_model.p_for_reduction(self.reduction)

    @staticmethod
    def report_line(report):
        return (f"Target FLOPs reduction {report['target_flops_reduction']:.1%}; measured on the "
                f"exported model **{report['flops_reduction']:.1%}**; latency reduction "
                f"{report['latency_reduction']:.1%}.")
