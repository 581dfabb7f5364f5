"""A run's budget, one class per kind (:mod:`~pn_tf.pipeline.budgets.base` says what one is).

Every module of this package is imported here, so a new kind is one new module.
"""

import importlib
import pkgutil

from pn_tf.pipeline.budgets.base import Budget, budget_of, kind_of, kinds, options, unregister

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = ["Budget", "budget_of", "kind_of", "kinds", "options", "unregister"]
