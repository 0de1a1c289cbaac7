"""The model registry: ``<scheme>_<architecture>`` names, builders and pretrained entries.

Architectures know nothing of weights and schemes know nothing of architectures; this
module ties them together with the pretrained manifest (``pretrained/manifest.json``,
shipped inside the package as ``zoo/pretrained/``, or the file named by ``$ZOO_MANIFEST``). Registering a scheme adds a model for every
architecture, and registering an architecture adds one for every scheme.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import os
import re
from pathlib import Path

import tf_keras as keras

from zoo.architectures import ARCHITECTURES, Architecture
from zoo.architectures.searched.config import SearchedArchitecture
from zoo.schemes import SCHEMES, Scheme

#: in the repository ``zoo/pretrained`` is a link to the top-level ``pretrained/``; a wheel holds the files
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "pretrained" / "manifest.json"
_REQUIRED_ENTRY_FIELDS = ("name", "tag", "dataset", "input_shape", "classes", "sha256", "metrics")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class UnknownModelError(ValueError):
    """A model name the registry does not know."""


class UnknownTagError(ValueError):
    """A pretrained tag the manifest does not have for that model."""


class ManifestError(ValueError):
    """The pretrained manifest is malformed."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: an architecture built with a scheme."""

    name: str
    architecture: Architecture
    scheme: Scheme

    def build(self, **kwargs) -> keras.Model:
        """Builds the model with random weights (keras.applications-style kwargs)."""
        model = self.architecture.builder(self.scheme, **kwargs)
        self.scheme.initialize(model, self.architecture.name)
        return model


@dataclasses.dataclass(frozen=True)
class PretrainedEntry:
    """One row of the pretrained manifest."""

    name: str
    tag: str
    dataset: str
    input_shape: tuple[int, int, int]
    classes: int
    sha256: str
    metrics: dict
    file: str | None = None
    url: str | None = None
    size: int | None = None
    builder_kwargs: dict = dataclasses.field(default_factory=dict)
    command: str = ""
    #: the budget and settings of the run that made the file (epochs, images, batch, seed, recipe)
    training: dict = dataclasses.field(default_factory=dict)
    #: the names of the outputs, in order (what output i means)
    class_names: tuple[str, ...] = ()
    manifest_dir: Path = Path(".")

    @property
    def source(self) -> str:
        """Local path (relative to the manifest) or URL of the weights file."""
        if self.file:
            return str((self.manifest_dir / self.file).resolve())
        return self.url

    def as_dict(self) -> dict:
        row = dataclasses.asdict(self)
        row.pop("manifest_dir")
        row["input_shape"] = list(self.input_shape)
        row["class_names"] = list(self.class_names)
        return {k: v for k, v in row.items() if v not in (None, {}, "", [])}


_MODELS: dict[str, ModelSpec] = {}
_SCHEMES: dict[str, Scheme] = {}
_ARCHITECTURES: dict[str, Architecture] = {}


def register_scheme(scheme: Scheme) -> None:
    """Adds ``<scheme>_<arch>`` for every registered architecture open to the scheme."""
    _SCHEMES[scheme.name] = scheme
    for arch in _ARCHITECTURES.values():
        _pair(scheme, arch)


def register_architecture(arch: Architecture) -> None:
    """Adds ``<scheme>_<arch>`` for every registered scheme (``arch.schemes`` limits them)."""
    _ARCHITECTURES[arch.name] = arch
    for scheme in _SCHEMES.values():
        _pair(scheme, arch)


def _pair(scheme: Scheme, arch: Architecture) -> None:
    if arch.schemes is None or scheme.name in arch.schemes:
        spec = ModelSpec(f"{scheme.name}_{arch.name}", arch, scheme)
        _MODELS[spec.name] = spec


def get_model_spec(name: str | os.PathLike) -> ModelSpec:
    """The registered model ``name``; a path to a searched architecture (``*.json``, written
    by ``zoo search``) is registered first, so every caller accepts one."""
    if isinstance(name, (str, os.PathLike)) and os.fspath(name).endswith(".json"):
        return _MODELS[register_searched(name)]
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"Unknown model {name!r}.{hint} `zoo.list_models()` lists all "
            f"{len(_MODELS)} models."
        ) from None


def schemes() -> list[Scheme]:
    """The registered schemes, in registration order."""
    return list(_SCHEMES.values())


def get_scheme(name: str) -> Scheme:
    """The registered scheme ``name`` (an unknown name lists the registered ones)."""
    try:
        return _SCHEMES[name]
    except KeyError:
        raise ValueError(f"Unknown scheme {name!r}; registered schemes: {', '.join(_SCHEMES)}.") from None


def register_searched(config) -> str:
    """Registers a searched architecture — ``zoo search``'s JSON file (path) or its dict —
    and returns its model name ``<scheme>_<name>``, which ``zoo.load``, ``zoo.info``,
    ``zoo.callbacks`` and the training recipes then serve like any other model.
    Registering the same architecture again is a no-op; another one under a taken name
    is an error."""
    searched = SearchedArchitecture.load(config)
    get_scheme(searched.scheme)
    arch = searched.architecture()
    if _ARCHITECTURES.get(arch.name, arch) != arch:
        raise ValueError(
            f"An architecture named {arch.name!r} is already registered and differs from "
            f"{config if isinstance(config, (str, os.PathLike)) else 'this one'}; rename one of them."
        )
    register_architecture(arch)
    return searched.model_name


def callbacks(name: str, epochs: int) -> list:
    """The per-epoch machinery a model's method needs during ``fit`` (RBNN: rotation
    update and sign schedule; none for the baselines):
    ``model.fit(data, epochs=E, callbacks=zoo.callbacks(name, E))``."""
    return get_model_spec(name).scheme.callbacks(epochs)


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted.

    With ``pretrained=True`` only those with at least one pretrained entry.
    """
    names = sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))
    if pretrained:
        with_weights = {entry.name for entry in manifest_entries()}
        names = [n for n in names if n in with_weights]
    return names


def manifest_path() -> Path:
    return Path(os.environ.get("ZOO_MANIFEST") or DEFAULT_MANIFEST)


def manifest_entries() -> list[PretrainedEntry]:
    """All entries of the pretrained manifest (read anew each call: it is small).

    A manifest that cannot be found is an error, never "no pretrained weights": the
    models it lists would otherwise load randomly initialised."""
    path = manifest_path()
    if not path.is_file():
        if os.environ.get("ZOO_MANIFEST"):
            raise ManifestError(f"$ZOO_MANIFEST names {path}, which is not a file.")
        raise ManifestError(
            f"The pretrained manifest {path} is missing: this zoo installation is incomplete "
            "(reinstall it, or set $ZOO_MANIFEST to a manifest)."
        )
    try:
        rows = json.loads(path.read_text())["entries"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ManifestError(f"Pretrained manifest {path} is malformed: {err}") from err
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ManifestError(f"Pretrained manifest {path} is malformed: 'entries' must be a list of objects.")
    return [_entry_from_row(row, path) for row in rows]


def _entry_from_row(row: dict, path: Path) -> PretrainedEntry:
    where = f"Pretrained manifest {path}: entry {row.get('name', '?')}/{row.get('tag', '?')}"
    missing = [f for f in _REQUIRED_ENTRY_FIELDS if f not in row]
    if missing or not (row.get("file") or row.get("url")):
        missing += [] if (row.get("file") or row.get("url")) else ["file or url"]
        raise ManifestError(f"{where} lacks {', '.join(missing)}.")
    fields = {f.name for f in dataclasses.fields(PretrainedEntry)} - {"manifest_dir"}
    unknown = set(row) - fields
    if unknown:
        raise ManifestError(f"Pretrained manifest {path}: unknown fields {sorted(unknown)}.")
    if not isinstance(row["sha256"], str) or not _SHA256.fullmatch(row["sha256"]):
        raise ManifestError(f"{where} has no valid sha256 (64 lowercase hex digits): {row['sha256']!r}.")
    shape, classes = row["input_shape"], row["classes"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_positive_int(d) for d in shape)):
        raise ManifestError(f"{where}: input_shape must be [height, width, channels], got {shape!r}.")
    if not _positive_int(classes):
        raise ManifestError(f"{where}: classes must be a positive integer, got {classes!r}.")
    names = row.get("class_names", [])
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) in (0, classes)):
        raise ManifestError(f"{where}: class_names must be a list of {classes} names, got {names!r}.")
    return PretrainedEntry(**{**row, "input_shape": tuple(shape), "class_names": tuple(names)},
                           manifest_dir=path.parent)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def pretrained_entries(name: str) -> list[PretrainedEntry]:
    """The pretrained entries of a model, in manifest order (the first is the default)."""
    get_model_spec(name)
    return [entry for entry in manifest_entries() if entry.name == name]


def pretrained_entry(name: str, tag: str) -> PretrainedEntry:
    entries = pretrained_entries(name)
    for entry in entries:
        if entry.tag == tag:
            return entry
    available = ", ".join(repr(e.tag) for e in entries) or "none"
    raise UnknownTagError(
        f"No pretrained weights {tag!r} for {name!r}; available tags: {available}. "
        "Pass weights=None for random initialisation, or a path / URL of a weights file."
    )


for _scheme in SCHEMES:
    register_scheme(_scheme)
for _arch in ARCHITECTURES:
    register_architecture(_arch)
