"""Binary architecture search with Keras Tuner (docs/search.md#spaces: BNAS, CP-NAS, BARS).

>>> from zoo.search import run_search
>>> summary = run_search(space="bars", dataset="fashion_mnist", budget="binary_macs=20M",
...                      tuner="bayesian", max_trials=10, epochs=2, output_dir="runs/search")
>>> model = zoo.load(summary["best_config"], weights=None)    # the best architecture, served by the registry

Modules: :mod:`~zoo.search.spaces` (``bnas``, ``bars``), :mod:`~zoo.search.budget`
(costs, limits, the space minimum), :mod:`~zoo.search.tuning` (hypermodel and tuners),
:mod:`~zoo.search.report` (summary, plot, Pareto front), :mod:`~zoo.search.run`
(``run_search``), and :mod:`~zoo.search.kt`, the one place Keras Tuner is imported. What a
search builds — the op set, the genotype and its builder, the searched-architecture file —
is an architecture like the others: :mod:`zoo.architectures.searched`. Keras Tuner is loaded only
when the tuning side is used: the registry reads searched files without it.
"""

from zoo.architectures.searched.config import SearchedArchitecture
from zoo.architectures.searched.network import Genotype, Node, SearchedNetwork, Stage
from zoo.architectures.searched.ops import DOWNSAMPLES, OPS, STEMS
from zoo.search.budget import Budget, BudgetError
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
