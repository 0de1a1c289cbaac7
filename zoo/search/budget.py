"""The deployment budget of a search: what a candidate costs and whether it may cost that.

Costs are those of the exported inference model (``zoo.to_inference``), counted by Larq's
profiler exactly as ``lq.models.summary`` reports them:

* ``binary_macs``: MACs whose kernel and input are both 1-bit;
* ``float_macs``: every other MAC (stem, float shortcuts, dense head);
* ``parameters``: Larq's parameter count (``ModelProfile.weight_count()``, the summary's
  "Total params"): a BatchNormalization counts 2 per channel, as it is fused at
  inference, where Keras' ``count_params`` counts 4;
* ``latency_ms``: measured, the median time of one image through LCE's interpreter
  (``zoo.deploy.benchmark``: x86, 1 thread, indirect BGEMM); only when a budget asks for
  it, as it needs a conversion per candidate.

A budget is a limit on any of them, e.g. ``binary_macs=20M,float_macs=1M``. It is a
constraint: a candidate over it is not trained; its trial is recorded with its costs and
``over_budget = 1`` and scores ``-excess`` (``excess``: the largest relative overshoot,
``cost / limit - 1``), below every trained candidate (whose score is its validation
accuracy ≥ 0), and the further over the lower, so a model-based tuner learns where the
limit lies.
"""

from __future__ import annotations

import dataclasses
import re

import larq as lq
import tf_keras as keras

from zoo import profile, registry
from zoo.architectures.searched.network import SearchedNetwork
from zoo.export import to_inference
from zoo.text import readable

METRICS = ("binary_macs", "float_macs", "parameters", "latency_ms")
_ALIASES = {"params": "parameters", "latency": "latency_ms"}
_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


class BudgetError(ValueError):
    """A malformed budget, or one no architecture of the space can meet."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """Upper limits per cost, ``((metric, limit), ...)``; empty: unconstrained."""

    limits: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, spec) -> Budget:
        """From ``"binary_macs=20M,params=0.3M"`` (k/M/G suffixes), a list of such, a dict or a Budget."""
        if isinstance(spec, Budget):
            return spec
        if not spec:
            return cls()
        if isinstance(spec, dict):
            items = list(spec.items())
        else:
            text = ",".join([spec] if isinstance(spec, str) else spec)
            items = [part.partition("=")[::2] for part in text.split(",") if part.strip()]
        limits = {}
        for key, value in items:
            metric = _ALIASES.get(key.strip(), key.strip())
            if metric not in METRICS:
                raise BudgetError(f"Unknown budget {key!r}; valid budgets: {', '.join(METRICS)} (params = parameters).")
            limits[metric] = _parse_number(value, metric)
        return cls(tuple(limits.items()))

    def __bool__(self):
        return bool(self.limits)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(metric for metric, _ in self.limits)

    def excess(self, costs: dict) -> float:
        """The largest relative overshoot ``cost / limit - 1`` (≤ 0 within budget)."""
        return max((costs[metric] / limit - 1.0 for metric, limit in self.limits), default=-1.0)

    def describe(self) -> str:
        return ", ".join(f"{metric} <= {readable(limit)}" for metric, limit in self.limits) or "none"

    def as_dict(self) -> dict:
        return dict(self.limits)


def _parse_number(value, metric: str) -> float:
    text = str(value).strip().lower() if value is not None else ""
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)", text)
    if not match or float(match.group(1)) <= 0:
        raise BudgetError(f"Budget {metric}: expected a positive number with an optional k/M/G suffix, got {value!r}.")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def model_costs(model: keras.Model, latency: bool = False) -> dict:
    """Binary / float MACs, parameters and binary convs of the model's inference form, by
    Larq's profiler; with ``latency``, also the measured LCE latency in ms."""
    inference = to_inference(model)
    costs = profile.costs(inference)
    costs["parameters"] = int(lq.models.ModelProfile(inference).weight_count())
    if latency:
        costs["latency_ms"] = measure_latency_ms(model)
    return costs


def measure_latency_ms(model: keras.Model) -> float:
    """Median latency of one image through LCE's x86 interpreter (``zoo benchmark``'s
    settings: 1 thread, indirect BGEMM kernels)."""
    from zoo.deploy import benchmark  # imports the converter: on use

    return benchmark(model, threads=1, warmup=5, repeats=30).results[0].median_ms


def space_minimum(space, metric: str, input_shape, classes: int) -> tuple[float, str, str]:
    """``(least cost, scheme, genotype description)`` of ``metric`` over the space.

    For latency (measured, not a sum of layer costs) it is the least measured latency of
    the space's least-MAC architectures (binary and float), an approximation.
    """
    best = None
    for scheme_name in space.schemes:
        scheme = registry.get_scheme(scheme_name)
        proxies = ("binary_macs", "float_macs") if metric == "latency_ms" else (metric,)
        for proxy in proxies:
            genotype = space.smallest(proxy, scheme_name)
            network = SearchedNetwork(f"smallest_{space.name}", genotype, tuple(input_shape), classes)
            value = model_costs(network(scheme), latency=metric == "latency_ms")[metric]
            if best is None or value < best[0]:
                best = (value, scheme_name, genotype.describe())
    return best


def check_reachable(space, budget: Budget, input_shape, classes: int) -> dict[str, float]:
    """Raises :class:`BudgetError` if a limit is below the space's least cost; returns the least costs."""
    minima = {}
    for metric, limit in budget.limits:
        least, scheme, description = space_minimum(space, metric, input_shape, classes)
        if least > limit:
            raise BudgetError(
                f"No architecture of space {space.name!r} meets {metric} <= {readable(limit)} at input "
                f"{tuple(input_shape)}: the smallest needs {readable(least)} ({scheme}; {description}). "
                "Raise the budget, or narrow the space (--ops, --schemes)."
            )
        minima[metric] = least
    return minima
