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

A file is untrusted input: it is checked against :data:`SCHEMA` (types and bounds, a
JSON-Schema subset) and its binary-conv weights are counted from the genotype before
anything is built, so a malformed or enormous architecture is refused in one line naming
the field.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from zoo.architectures.common import Architecture
from zoo.architectures.searched.network import Genotype, SearchedNetwork
from zoo.architectures.searched.ops import OPS
from zoo.files import atomic_write

FORMAT = "zoo-searched-architecture"
VERSION = 1
#: binary-conv weights a searched architecture may have (the searched spaces' largest have
#: a few hundred thousand; a ResNet-50 has 25M weights in all)
MAX_BINARY_WEIGHTS = 64_000_000


def _integer(least: int, most: int) -> dict:
    return {"type": "integer", "minimum": least, "maximum": most}


def _name(longest: int = 64) -> dict:
    return {"type": "string", "maxLength": longest}


_NODE = {
    "type": "object",
    "required": ["inputs", "ops"],
    "properties": {
        "inputs": {"type": "array", "minItems": 1, "maxItems": 8, "items": _integer(0, 16)},
        "ops": {"type": "array", "minItems": 1, "maxItems": 8, "items": _name()},
    },
}
_STAGE = {
    "type": "object",
    "required": ["width", "cells", "cell"],
    "properties": {
        "width": _integer(1, 2048),
        "cells": _integer(1, 64),
        "downsample": {"type": ["string", "null"], "maxLength": 64},
        "cell": {"type": "array", "minItems": 1, "maxItems": 16, "items": _NODE},
    },
}
#: the searched-architecture file, as a JSON Schema (the subset :func:`check_schema` reads)
SCHEMA = {
    "type": "object",
    "required": ["format", "version", "name", "scheme", "input_shape", "classes", "genotype"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "name": _name(),
        "scheme": _name(),
        "input_shape": {"type": "array", "minItems": 3, "maxItems": 3, "items": _integer(1, 4096),
                        "description": "[height, width, channels]"},
        "classes": _integer(1, 100_000),
        "genotype": {
            "type": "object",
            "required": ["stem", "stages"],
            "properties": {
                "stem": _name(),
                "stages": {"type": "array", "minItems": 1, "maxItems": 8, "items": _STAGE},
            },
        },
        "costs": {"type": "object", "maxDepth": 1},
        "search": {"type": "object", "maxDepth": 3},
    },
}
_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "null": type(None)}
_KINDS = {"object": "an object", "array": "an array", "string": "a string", "integer": "an integer",
          "number": "a number", "null": "null"}


def check_schema(value, schema: dict = SCHEMA, where: str = "") -> None:
    """Raises ValueError naming the first field of ``value`` that ``schema`` refuses.

    Reads ``type``, ``const``, ``minimum``/``maximum``, ``minItems``/``maxItems``, ``items``,
    ``maxLength``, ``required``, ``properties`` and ``maxDepth`` (how deeply an object may
    nest), and walks ``value`` only as deep as the schema goes. Booleans are no numbers.
    """
    field = where or "the file"
    shape = f" {schema['description']}" if "description" in schema else ""
    if "const" in schema and (type(value) is not type(schema["const"]) or value != schema["const"]):
        raise ValueError(f"{field} must be {json.dumps(schema['const'])}, got {_short(value)}.")
    kinds = [schema["type"]] if isinstance(schema.get("type"), str) else schema.get("type", [])
    if kinds and (isinstance(value, bool) or not isinstance(value, tuple(_TYPES[kind] for kind in kinds))):
        raise ValueError(f"{field} must be {' or '.join(_KINDS[kind] for kind in kinds)}{shape}, got {_short(value)}.")
    if "minimum" in schema and not schema["minimum"] <= value <= schema["maximum"]:
        raise ValueError(f"{field} must be in {schema['minimum']}..{schema['maximum']}, got {_short(value)}.")
    if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        raise ValueError(f"{field} is longer than {schema['maxLength']} characters.")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            least, most = schema.get("minItems", 0), schema["maxItems"]
            count = most if least == most else f"{least} to {most}"
            raise ValueError(f"{field} must have {count} items{shape}, got {_short(value)}.")
        for index, item in enumerate(value):
            check_schema(item, schema.get("items", {}), f"{where}[{index}]")
    if isinstance(value, dict):
        missing = [key for key in schema.get("required", ()) if key not in value]
        if missing:
            raise ValueError(f"{field} lacks {', '.join(missing)}.")
        for key, part in schema.get("properties", {}).items():
            if key in value:
                check_schema(value[key], part, f"{where}.{key}" if where else key)
        if "maxDepth" in schema and _depth(value, schema["maxDepth"]) > schema["maxDepth"]:
            raise ValueError(f"{field} nests deeper than {schema['maxDepth']} levels.")


def _depth(value, limit: int) -> int:
    """How deeply ``value`` nests objects and arrays, counted no further than ``limit + 1``."""
    if not isinstance(value, (dict, list)) or limit < 0:
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


def _short(value) -> str:
    """``value`` as JSON, cut to 40 characters (its type's name if it does not serialise)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def binary_weights(genotype: dict) -> int:
    """The binary-conv weights of a schema-checked genotype dict, counted without building it."""
    return sum(
        stage["cells"] * OPS[op].kernel_size ** 2 * stage["width"] ** 2 // OPS[op].groups
        for stage in genotype["stages"] for node in stage["cell"] for op in node["ops"] if op in OPS
    )


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
        atomic_write(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, data: dict, source: str = "searched architecture") -> SearchedArchitecture:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{source} is not a zoo searched architecture (no \"format\": \"{FORMAT}\").")
        if data.get("version") != VERSION:
            raise ValueError(f"{source}: unsupported version {data.get('version')!r} (this zoo reads {VERSION}).")
        try:
            check_schema(data)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        weights = binary_weights(data["genotype"])
        if weights > MAX_BINARY_WEIGHTS:
            raise ValueError(f"{source}: genotype has {weights:,} binary-conv weights, more than the "
                             f"{MAX_BINARY_WEIGHTS:,} a searched architecture may have (stage widths, cells, ops).")
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
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        except RecursionError:
            raise ValueError(f"{path} nests too deeply to be a searched architecture.") from None
        return cls.from_dict(data, source=str(path))
