"""The pipeline's settings: each is a command-line flag and a RunConfig field.

``OPTIONS`` is the single list: the settings of :mod:`pn_tf.settings`, the pipeline's
``--stages`` (from the stage registry) and each budget kind's options
(:mod:`pn_tf.pipeline.budgets`). :func:`define_flags` turns it into absl flags and
:class:`RunConfig` into a frozen dataclass with the same names and defaults, so a setting
declared once exists in both, with one help text, its choices and its limits.
"""

import dataclasses

from pn_tf import settings
from pn_tf.pipeline import budgets
from pn_tf.pipeline.stages import STAGE_NAMES

OPTIONS = (
    *settings.OPTIONS,
    settings.option("stages", "list", list(STAGE_NAMES), "Stages to run, in order, from "
                    f"{', '.join(STAGE_NAMES)}.", STAGE_NAMES),
    *budgets.options(),
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
    "RunConfig", [(o.name, object, _field(o)) for o in OPTIONS if o.name != "log_level"], frozen=True,
    namespace={"__doc__": "Every setting of a run (pn_tf.pipeline.config.OPTIONS), frozen; "
                          "Pipeline.validate makes the normalized one a run uses."})
RunConfig.__module__ = __name__


def config_from_flags(flag_values):
    """A RunConfig from parsed absl flags."""
    return RunConfig(**{f.name: flag_values[f.name].value for f in dataclasses.fields(RunConfig)
                        if f.name in flag_values})
