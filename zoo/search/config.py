"""The searched-architecture file: what ``zoo search`` saves and the registry serves.

A JSON object::

    {
      "format": "zoo-searched-architecture", "version": 1,
      "name": "bars_fashion_mnist_1a2b3c4d",       # the architecture; the model is <scheme>_<name>
      "scheme": "xnor",                            # a registered binary scheme
      "input_shape": [28, 28, 1], "classes": 10,   # the defaults of the model
      "genotype": {"stem": "conv3x3", "stages": [
          {"width": 16, "cells": 2, "downsample": null,
           "cell": [{"inputs": [0, 0], "ops": ["bconv3x3", "skip"]}, ...]}, ...]},
      "costs": {"binary_macs": ..., "float_macs": ..., "parameters": ..., "binary_convs": ...},
      "search": {"space": "bars", "dataset": ..., "budget": {...}, "trial_id": ..., ...}
    }

``costs`` and ``search`` are provenance (what the search measured); the model is defined by
``scheme``, ``genotype``, ``input_shape`` and ``classes`` alone. ``zoo.load(path)`` or
``zoo.register_searched(path)`` serve it; see :func:`zoo.registry.register_searched`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

from zoo.architectures.common import Architecture
from zoo.search.network import Genotype, SearchedNetwork

FORMAT = "zoo-searched-architecture"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class SearchedArchitecture:
    name: str
    scheme: str
    genotype: Genotype
    input_shape: tuple[int, int, int]
    classes: int
    costs: dict = dataclasses.field(default_factory=dict, compare=False)
    search: dict = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", self.name):
            raise ValueError(
                f"A searched architecture name must be lower-case letters, digits and _, got {self.name!r}."
            )

    @property
    def model_name(self) -> str:
        return f"{self.scheme}_{self.name}"

    def network(self) -> SearchedNetwork:
        space = self.search.get("space")
        return SearchedNetwork(
            self.name, self.genotype, tuple(self.input_shape), self.classes,
            description=f"searched in space {space}" if space else "searched binary network",
        )

    def architecture(self) -> Architecture:
        """The registry's architecture, open to this architecture's scheme only."""
        return self.network().architecture(schemes=(self.scheme,))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "scheme": self.scheme,
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "genotype": self.genotype.to_dict(),
            "costs": self.costs,
            "search": self.search,
        }

    def save(self, path) -> Path:
        """Writes the JSON file atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".part", delete=False) as tmp:
            json.dump(self.to_dict(), tmp, indent=2)
        os.replace(tmp.name, path)
        return path

    @classmethod
    def from_dict(cls, data: dict, source: str = "searched architecture") -> SearchedArchitecture:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{source} is not a zoo searched architecture (no \"format\": \"{FORMAT}\").")
        if data.get("version") != VERSION:
            raise ValueError(f"{source}: unsupported version {data.get('version')!r} (this zoo reads {VERSION}).")
        missing = [k for k in ("name", "scheme", "input_shape", "classes", "genotype") if k not in data]
        if missing:
            raise ValueError(f"{source} lacks {', '.join(missing)}.")
        return cls(
            name=data["name"],
            scheme=data["scheme"],
            genotype=Genotype.from_dict(data["genotype"]),
            input_shape=tuple(data["input_shape"]),
            classes=int(data["classes"]),
            costs=dict(data.get("costs", {})),
            search=dict(data.get("search", {})),
        )

    @classmethod
    def load(cls, config) -> SearchedArchitecture:
        """From a path, a dict, or an instance."""
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"Searched architecture file {path} not found.")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(data, source=str(path))
