"""What a budget is: one class per kind (FLOPs, latency, ...), the only place that knows the kind.

A :class:`Budget` owns its flags (a target fraction to remove and any others), checks them and
the network before any stage runs, builds the cost model that the search regularizes and
extraction selects on (an object with :class:`~pn_tf.graph.FlopsModel`'s interface: ``name``,
``unit``, ``total``, ``prunable``, ``widths``, ``graph``, ``count``, ``__call__``,
``p_for_reduction``), names the summary and report fields that describe its landing, and writes
the report's first line. The search, extraction and report stages receive the run's budget and
never ask which kind it is.

A new kind is one module in this package holding one subclass with a ``kind`` (modules here
are imported by the package, and each subclass registers itself).
"""

from pn_tf.pipeline.errors import PipelineError

_KINDS = {}  # kind -> Budget subclass, in the order the modules register them


class Budget:
    """The run's budget (a subclass per kind; :func:`budget_of` picks one from the config).

    Class attributes a kind sets:
        kind: short name stored in summaries and reports ("flops", "latency").
        target: the :class:`~pn_tf.pipeline.option.Option` of the fraction to remove.
        options: its other options (given with another budget, they are refused).
        default: the kind used when no other kind's target is given (one kind only).
    """

    kind = None
    target = None
    options = ()
    default = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _KINDS[cls.kind] = cls

    def __init__(self, config):
        self.config = config
        self.reduction = getattr(config, self.target.name)

    # -- before any stage ----------------------------------------------------------

    def check_flags(self):
        """The budget's flags alone, before anything is built; extend in a kind."""
        try:
            self.target.check(self.reduction)
        except ValueError as err:
            raise PipelineError(str(err)) from None
        for other in kinds():
            if other is type(self):
                continue
            given = [o for o in other.options
                     if getattr(self.config, o.name, None) not in (o.default, None, "")]
            if given:
                raise PipelineError(f"--{given[0].name} goes with --{other.target.name}=R; this run's "
                                    f"budget is --{self.target.name}={self.reduction}")

    def check(self, network, run):
        """The network can reach the target: raise a PipelineError otherwise (before any stage;
        after the stages' own checks).

        ``run``: the run context (``workdir``, ``is_chief``, ``model.name``) for budgets that
        keep files.
        """

    def cost_model(self, graph):
        """What the search regularizes and extraction selects on, for ``graph``'s groups."""
        raise NotImplementedError

    def p(self, cost_model):
        """The regularizer's bound p (METHOD.md item 4) for this target."""
        return cost_model.p_for_reduction(self.reduction)

    # -- what it landed on -----------------------------------------------------------

    def land(self, extract, network, graph, cost, calibration=None, unpruned=None, image=None):
        """``(extraction, summary fields)``: where extraction lands for this budget.

        ``extract``: ``reduction -> Extraction`` (channels selected on ``cost`` at that cut);
        ``calibration``: the export's int8 calibration batches, for a kind that measures
        TFLite files (converted as the export converts them); ``unpruned``: ``() -> keras.Model``,
        the baseline the export stage exports (the baseline stage's weights, not the search's);
        ``image``: the image the report times on (:func:`pn_tf.pipeline.stages.report.timing_image`).
        The default selects at the target; a kind whose cost is measured may correct the aim.
        """
        return extract(self.reduction), {}

    def selection_fields(self, selection):
        """The extract summary's fields for a :class:`~pn_tf.extract.Selection` on this budget."""
        return {"budget": self.kind, self.target.name: self.reduction,
                "target_reduction": self.reduction, "estimated_reduction": selection.reduction}

    @property
    def timed_dtype(self):
        """The TFLite variant whose latency the report's ``latency_reduction`` measures."""
        return "float32"

    def report_fields(self, extract_summary, run):
        """The report's fields of this budget, from the extract summary."""
        return {"budget": self.kind, self.target.name: self.reduction}

    @staticmethod
    def report_line(report):
        """The report's first line: what was asked and what the exported model measures."""
        raise NotImplementedError


def kinds():
    """The registered budget classes."""
    return list(_KINDS.values())


def unregister(kind):
    """Removes a budget kind (one a test or a user registered)."""
    _KINDS.pop(kind, None)


def kind_of(report):
    """The budget class that wrote ``report`` (a report or extract summary dict)."""
    kind = report.get("budget")
    if kind is None:  # written before budgets were named: the latency budget set its target
        kind = "latency" if report.get("target_latency_reduction") is not None else "flops"
    if kind not in _KINDS:
        raise ValueError(f"unknown budget {kind!r} in the report; known: {', '.join(_KINDS)}")
    return _KINDS[kind]


def budget_of(config):
    """The run's budget: the kind whose target flag is set, else the default kind."""
    chosen = [cls for cls in kinds()
              if not cls.default and getattr(config, cls.target.name, None) is not None]
    if len(chosen) > 1:
        raise PipelineError(f"pass one budget, not {' and '.join('--' + c.target.name for c in chosen)}")
    if not chosen:
        chosen = [cls for cls in kinds() if cls.default]
    return chosen[0](config)


def options():
    """Every budget kind's options, targets first (for the option table)."""
    return ([cls.target for cls in kinds()] + [o for cls in kinds() for o in cls.options])
