"""The search spaces: how Keras Tuner hyperparameters become a scheme and a genotype.

``bnas`` — the BNAS / CP-NAS cell space (docs/search.md#spaces): one searched cell of
4 nodes with 2 edges each (each edge: an input among the cell input and earlier nodes,
and an op of BNAS's set with binary convs), repeated ``L`` times; width ``C`` doubling at
the reductions placed, as in BNAS, before cells ``⌊L/3⌋`` and ``⌊2L/3⌋``; one searched
downsampling for both reductions; the float 3×3 stem.

``bars`` — the BARS two-level space (docs/search.md#spaces): a macro layout (stem stride;
per stage its depth, its width and how it downsamples — binary or float 1×1 shortcut, or
none) and a micro cell of 2 nodes × 2 edges among binary convs, pooling and identity.

Both also search the binarization scheme: any registered binary scheme whose conv can
build every op of the op set (``bnn``, ``xnor``, ``bireal`` by default). A space maps a
``hp`` object (``keras_tuner.HyperParameters`` or anything with its ``Choice`` / ``Int``)
to a :class:`Candidate`; the same code gives the smallest architecture of the space for
a cost (:meth:`SearchSpace.smallest`), which is how an unreachable budget is caught before
any training.
"""

from __future__ import annotations

import dataclasses
import functools

import tf_keras as keras

from zoo import registry
from zoo.search.budget import model_costs
from zoo.architectures.searched.ops import (
    DOWNSAMPLES,
    OPS,
    STEMS,
    UnsupportedOpError,
    apply_downsample,
    apply_op,
    binary_conv,
    check_names,
)
from zoo.architectures.searched.network import Genotype, Node, Stage

DEFAULT_SCHEMES = ("bnn", "xnor", "bireal")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One point of a space: a binarization scheme and a genotype."""

    scheme: str
    genotype: Genotype


class SearchSpace:
    name = ""
    description = ""
    default_ops: tuple[str, ...] = tuple(OPS)

    def __init__(self, schemes=None, ops=None):
        self.schemes = check_schemes(DEFAULT_SCHEMES if schemes is None else schemes)
        self.ops = check_names(self.default_ops if ops is None else ops, OPS, "op")
        if not self.ops:
            raise ValueError("The op set is empty.")
        for scheme in self.schemes:
            check_support(registry.get_scheme(scheme), self.ops)

    def candidate(self, hp) -> Candidate:
        raise NotImplementedError

    def smallest(self, metric: str, scheme: str) -> Genotype:
        """The genotype with the least ``metric`` for ``scheme``.

        Every cost (binary / float MACs, parameters) grows with widths and depths and
        is a sum over layers, so the least one takes the smallest width and depth,
        the most strided stem and, for every op or downsampling choice, the one whose
        own cost is least (measured by Larq's profiler on a probe feature map).
        """
        return self.candidate(_CheapestChoices(metric, scheme)).genotype

    def __repr__(self):
        return f"<SearchSpace {self.name}: schemes {self.schemes}, ops {self.ops}>"


def check_schemes(names) -> tuple[str, ...]:
    names = tuple(names)
    for name in names:
        scheme = registry.get_scheme(name)
        if not scheme.binary:
            raise ValueError(f"Scheme {name!r} is not binary; the search is over binary schemes.")
    if not names:
        raise ValueError("The scheme list is empty.")
    return names


def check_support(scheme, ops) -> None:
    """Raises :class:`UnsupportedOpError` if the scheme's conv cannot build one of ``ops``."""
    for op in ops:
        if OPS[op].binary:
            binary_conv(scheme, 8, OPS[op].kernel_size, 1, OPS[op].dilation, name="probe")


class BNASSpace(SearchSpace):
    name = "bnas"
    description = "BNAS/CP-NAS cell space: 4-node searched cell x L, width doubling at L/3 and 2L/3"
    widths = (16, 24, 32)
    cell_counts = (3, 8)
    nodes = 4

    def candidate(self, hp) -> Candidate:
        scheme = hp.Choice("scheme", list(self.schemes))
        cells = hp.Int("cells", *self.cell_counts)
        width = hp.Choice("width", list(self.widths))
        downsample = hp.Choice("downsample", list(DOWNSAMPLES))
        cell = searched_cell(hp, self.nodes, self.ops)
        first, second = cells // 3, 2 * cells // 3
        counts = (first, second - first, cells - second)
        stages = tuple(
            Stage(width=width * 2**i, cells=count, cell=cell, downsample=None if i == 0 else downsample)
            for i, count in enumerate(counts)
        )
        return Candidate(scheme, Genotype(stem="conv3x3", stages=stages))


class BARSSpace(SearchSpace):
    name = "bars"
    description = "BARS two-level space: per-stage depth/width/downsampling, stem stride, 2-node searched cell"
    default_ops = ("bconv3x3", "bconv5x5", "bdil3x3", "bgroup3x3", "skip", "max_pool3x3", "avg_pool3x3")
    stage_widths = ((16, 24, 32), (32, 48, 64), (64, 96, 128))
    depths = (1, 3)
    nodes = 2

    def candidate(self, hp) -> Candidate:
        scheme = hp.Choice("scheme", list(self.schemes))
        stem = hp.Choice("stem", list(STEMS))
        cell = searched_cell(hp, self.nodes, self.ops)
        stages = tuple(
            Stage(
                width=hp.Choice(f"stage{number}_width", list(widths)),
                cells=hp.Int(f"stage{number}_cells", *self.depths),
                cell=cell,
                downsample=None if number == 1 else hp.Choice(f"stage{number}_downsample", list(DOWNSAMPLES)),
            )
            for number, widths in enumerate(self.stage_widths, start=1)
        )
        return Candidate(scheme, Genotype(stem=stem, stages=stages))


def searched_cell(hp, nodes: int, ops) -> tuple[Node, ...]:
    """A cell of ``nodes`` nodes with 2 searched edges each (node 1 reads the cell input)."""
    return tuple(
        Node(
            inputs=tuple(0 if index == 1 else hp.Int(f"node{index}_input{edge}", 0, index - 1) for edge in (1, 2)),
            ops=tuple(hp.Choice(f"node{index}_op{edge}", list(ops)) for edge in (1, 2)),
        )
        for index in range(1, nodes + 1)
    )


SPACES: dict[str, type[SearchSpace]] = {space.name: space for space in (BNASSpace, BARSSpace)}


def get_space(name: str, schemes=None, ops=None) -> SearchSpace:
    """The space called ``name`` (``bnas`` or ``bars``) over ``schemes`` and ``ops``."""
    if name not in SPACES:
        raise ValueError(f"Unknown search space {name!r}; valid spaces: {', '.join(SPACES)}.")
    return SPACES[name](schemes, ops)


class _CheapestChoices:
    """A stand-in for ``HyperParameters`` that answers every choice with its cheapest value."""

    def __init__(self, metric: str, scheme: str):
        self.metric = metric
        self.scheme = scheme

    def Choice(self, name, values, **kwargs):  # noqa: N802  (the HyperParameters API)
        if name == "scheme":
            return self.scheme
        if all(v in STEMS for v in values):
            return max(values, key=STEMS.get)
        if all(v in OPS or v in DOWNSAMPLES for v in values):
            costs = probe_costs(self.scheme)
            return min(values, key=lambda v: costs[v][self.metric])
        return min(values)

    def Int(self, name, min_value, max_value, **kwargs):  # noqa: N802
        return min_value


@functools.lru_cache(maxsize=None)
def probe_costs(scheme_name: str) -> dict[str, dict[str, int]]:
    """Larq's costs of every op and downsampling of ``scheme_name`` on a 8×8×16 feature map."""
    scheme = registry.get_scheme(scheme_name)
    costs = {}
    for name in (*OPS, *DOWNSAMPLES):
        inputs = keras.Input((8, 8, 16))
        try:
            if name in OPS:
                outputs = apply_op(name, inputs, scheme, "probe")
            else:
                outputs = apply_downsample(name, inputs, scheme, 32, "probe")
        except UnsupportedOpError:
            continue
        costs[name] = model_costs(keras.Model(inputs, outputs))
    return costs
