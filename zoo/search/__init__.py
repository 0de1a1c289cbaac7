"""Binary architecture search with Keras Tuner (docs/search.md#spaces: BNAS, CP-NAS, BARS).

>>> from zoo.search import run_search
>>> summary = run_search(space="bars", dataset="fashion_mnist", budget="binary_macs=20M",
...                      tuner="bayesian", max_trials=10, epochs=2, output_dir="runs/search")
>>> model = zoo.load(summary["best_config"], weights=None)    # the best architecture, served by the registry

Modules: :mod:`~zoo.search.ops` (the op set), :mod:`~zoo.search.network` (genotype and
builder), :mod:`~zoo.search.spaces` (``bnas``, ``bars``), :mod:`~zoo.search.budget`
(costs, limits, the space minimum), :mod:`~zoo.search.tuning` (hypermodel and tuners),
:mod:`~zoo.search.report` (summary, plot, Pareto front), :mod:`~zoo.search.config` (the
searched-architecture file), :mod:`~zoo.search.run` (``run_search``), and
:mod:`~zoo.search.kt`, the one place Keras Tuner is imported. Keras Tuner is loaded only
when the tuning side is used: the registry reads searched files without it.
"""

from zoo.search.budget import Budget, BudgetError
from zoo.search.config import SearchedArchitecture
from zoo.search.network import Genotype, Node, SearchedNetwork, Stage
from zoo.search.ops import DOWNSAMPLES, OPS, STEMS
from zoo.search.spaces import SPACES, get_space


def __getattr__(name):
    if name == "run_search":  # imports Keras Tuner
        from zoo.search.run import run_search

        return run_search
    raise AttributeError(f"module 'zoo.search' has no attribute {name!r}")


__all__ = [
    "DOWNSAMPLES",
    "OPS",
    "SPACES",
    "STEMS",
    "Budget",
    "BudgetError",
    "Genotype",
    "Node",
    "SearchedArchitecture",
    "SearchedNetwork",
    "Stage",
    "get_space",
    "run_search",
]
