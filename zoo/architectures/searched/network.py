"""Searched networks: the genotype (what a search picks) and the builder that makes a model of it.

A genotype is the architecture without its binarization scheme:

* ``stem``: the float stem (:data:`~zoo.architectures.searched.ops.STEMS`), giving the first stage's width;
* ``stages``: each with a ``width``, a number of ``cells`` and the ``cell`` they repeat,
  and, from the second stage on, the ``downsample`` (:data:`~zoo.architectures.searched.ops.DOWNSAMPLES`)
  that halves the resolution and sets the new width;
* a cell is a list of nodes; node ``i`` (1-based) sums its edges, each edge an op
  (:data:`~zoo.architectures.searched.ops.OPS`) applied to the cell input (index 0) or an earlier node.
  The cell's output is ``act(input + Σ nodes no later node reads)``: a real-valued
  shortcut around every cell, which binary networks need for their information flow.

After the last stage: global average pooling, BN, the float dense head (as the zoo's
ResNets). Like every zoo builder, this one takes a scheme and keras.applications-style
arguments and never asks which method it builds; it imports no registry and no method.
"""

from __future__ import annotations

import dataclasses

import tf_keras as keras

from zoo.architectures.common import Architecture, application_input
from zoo.architectures.searched.ops import DOWNSAMPLES, OPS, STEMS, apply_downsample, apply_op, apply_stem, check_names


@dataclasses.dataclass(frozen=True)
class Node:
    """A cell node: the sum of ``op[k](state[inputs[k]])`` over its edges."""

    inputs: tuple[int, ...]
    ops: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Stage:
    width: int
    cells: int
    cell: tuple[Node, ...]
    downsample: str | None = None


@dataclasses.dataclass(frozen=True)
class Genotype:
    stem: str
    stages: tuple[Stage, ...]

    def __post_init__(self):
        check_names([self.stem], STEMS, "stem")
        if not self.stages:
            raise ValueError("A genotype needs at least one stage.")
        previous_width = None
        for number, stage in enumerate(self.stages, start=1):
            where = f"stage {number}"
            if not (isinstance(stage.width, int) and stage.width > 0 and isinstance(stage.cells, int)
                    and stage.cells > 0):
                raise ValueError(f"{where}: width and cells must be positive integers, got {stage.width!r}, "
                                 f"{stage.cells!r}.")
            if (stage.downsample is None) != (number == 1):
                raise ValueError(f"{where}: the first stage has no downsample and every later stage has one.")
            if stage.downsample is not None:
                check_names([stage.downsample], DOWNSAMPLES, "downsample")
                if stage.downsample == "option_a" and stage.width < previous_width:
                    raise ValueError(f"{where}: option_a cannot shrink {previous_width} channels to {stage.width}.")
            if not stage.cell:
                raise ValueError(f"{where}: a cell needs at least one node.")
            for index, node in enumerate(stage.cell, start=1):
                check_names(node.ops, OPS, "op")
                if len(node.inputs) != len(node.ops) or not node.ops:
                    raise ValueError(f"{where}, node {index}: needs one input per op, got {node.inputs}, {node.ops}.")
                if any(not 0 <= i < index for i in node.inputs):
                    raise ValueError(f"{where}, node {index}: inputs must be in 0..{index - 1}, got {node.inputs}.")
                for op in node.ops:
                    if stage.width % OPS[op].groups:
                        raise ValueError(f"{where}: op {op} needs a width divisible by {OPS[op].groups}, "
                                         f"got {stage.width}.")
            previous_width = stage.width

    @property
    def total_stride(self) -> int:
        return STEMS[self.stem] * 2 ** (len(self.stages) - 1)

    def to_dict(self) -> dict:
        return {
            "stem": self.stem,
            "stages": [
                {
                    "width": s.width,
                    "cells": s.cells,
                    "downsample": s.downsample,
                    "cell": [{"inputs": list(n.inputs), "ops": list(n.ops)} for n in s.cell],
                }
                for s in self.stages
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Genotype:
        try:
            stages = tuple(
                Stage(
                    width=s["width"],
                    cells=s["cells"],
                    downsample=s.get("downsample"),
                    cell=tuple(Node(tuple(n["inputs"]), tuple(n["ops"])) for n in s["cell"]),
                )
                for s in data["stages"]
            )
            return cls(stem=data["stem"], stages=stages)
        except (KeyError, TypeError) as err:
            raise ValueError(f"Malformed genotype {data!r}: {err!r}") from None

    def describe(self) -> str:
        """One line: stem, then ``width x cells [downsample]`` per stage."""
        stages = ", ".join(
            f"{s.width}x{s.cells}" + (f" ({s.downsample})" if s.downsample else "") for s in self.stages
        )
        cells = {tuple(s.cell) for s in self.stages}
        cell = " | ".join(
            "+".join(f"{op}({i})" for i, op in zip(n.inputs, n.ops)) for n in self.stages[0].cell
        )
        return f"stem {self.stem}; stages {stages}; cell {cell}" + ("" if len(cells) == 1 else " (per stage)")


def _cell(x, scheme, stage: Stage, name: str):
    states = [x]
    read = set()
    for index, node in enumerate(stage.cell, start=1):
        edges = [
            apply_op(op, states[source], scheme, f"{name}_node{index}_edge{edge}")
            for edge, (source, op) in enumerate(zip(node.inputs, node.ops), start=1)
        ]
        read.update(node.inputs)
        states.append(edges[0] if len(edges) == 1 else keras.layers.Add(name=f"{name}_node{index}")(edges))
    loose_ends = [state for index, state in enumerate(states[1:], start=1) if index not in read]
    y = keras.layers.Add(name=f"{name}_add")([x, *loose_ends])
    return scheme.activation_layer(f"{name}_act")(y)


def build_network(
    scheme,
    genotype: Genotype,
    arch: Architecture,
    **options,
) -> keras.Model:
    """The model of ``genotype`` with ``scheme``'s binary convs (raw 0-255 pixels in); the
    keywords are those of :func:`~zoo.architectures.common.application_input` (a genotype
    fixes its widths: no ``width_multiplier``)."""
    net = application_input(arch, **options)
    x = apply_stem(genotype.stem, net.features, scheme, genotype.stages[0].width)
    for number, stage in enumerate(genotype.stages, start=1):
        if stage.downsample is not None:
            x = apply_downsample(stage.downsample, x, scheme, stage.width, f"stage{number}_down")
        for cell in range(1, stage.cells + 1):
            x = _cell(x, scheme, stage, f"stage{number}_cell{cell}")
    return keras.Model(net.inputs, net.pooled_head(x), name=f"{scheme.name}_{arch.name}")


@dataclasses.dataclass(frozen=True)
class SearchedNetwork:
    """The builder of one searched architecture: ``SearchedNetwork(...)(scheme, **kwargs)``."""

    name: str
    genotype: Genotype
    default_input_shape: tuple[int, int, int]
    default_classes: int
    description: str = "searched binary network"

    def architecture(self, schemes: tuple[str, ...] | None = None) -> Architecture:
        return Architecture(
            name=self.name,
            builder=self,
            family="Searched (zoo search)",
            description=f"{self.description}: {self.genotype.describe()}",
            default_input_shape=self.default_input_shape,
            default_classes=self.default_classes,
            min_input_size=self.genotype.total_stride,
            schemes=schemes,
        )

    def __call__(self, scheme, **kwargs) -> keras.Model:
        return build_network(scheme, self.genotype, self.architecture(), **kwargs)
