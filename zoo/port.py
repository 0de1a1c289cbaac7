"""``zoo.port``: the RBNN authors' PyTorch checkpoints as zoo models.

The official RBNN code (lmbxmu/RBNN) publishes its trained networks as PyTorch state
dicts. :func:`rbnn_from_pytorch` maps one, entry by entry, onto the zoo model that
computes what the authors' forward computes — ``rbnn_resnet20_official`` (CIFAR
``resnet20_1w1a``), ``rbnn_resnet18_official`` / ``rbnn_resnet34_official`` (ImageNet
``resnet18_1w1a`` / ``resnet34_1w1a``): the zoo's own RBNN layer, zero padding after
binarization and PyTorch's stride-2 padding (see :mod:`zoo.architectures.resnet`).
:func:`rbnn_state_dict` maps a model back. :func:`read_state_dict` reads an ``.npz`` of
a state dict, or a ``.pt`` / ``.pth`` file saved by ``torch.save`` when PyTorch is
installed (``pip install 'zoo[torch]'``; its restricted ``weights_only`` loader: nothing
else is ever unpickled).

Every entry's name and shape is checked against the architecture before anything is
assigned; a state dict that does not fit raises :class:`PortError` naming the first
problem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import tf_keras as keras

from zoo import registry
from zoo.files import atomic_path

#: extensions read by :func:`read_state_dict`
NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".pt", ".pth")

_TORCH_HINT = (
    "install PyTorch (pip install 'zoo[torch]'), or save the state dict as .npz: "
    "numpy.savez(path, **{k: v.numpy() for k, v in state_dict.items()})"
)


class PortError(ValueError):
    """A checkpoint that is not an official RBNN state dict the zoo can port."""


@dataclasses.dataclass(frozen=True)
class OfficialLayout:
    """An official RBNN network: its PyTorch module names and the zoo model that computes it."""

    arch: str
    reference: str
    blocks_per_stage: tuple[int, ...]
    #: the name of the final linear layer
    linear: str
    #: modules the reference defines but its forward never uses (their entries are accepted and dropped)
    unused: tuple[str, ...] = ()

    @property
    def model_name(self) -> str:
        return f"rbnn_{self.arch}_official"

    def modules(self) -> list[tuple[str, str, str]]:
        """``(PyTorch module, Keras layer, kind)`` for every module with parameters, in order."""
        mapping = [("conv1", "stem_conv", "conv"), ("bn1", "stem_bn", "bn")]
        for stage, blocks in enumerate(self.blocks_per_stage, start=1):
            for block in range(blocks):
                module, layer = f"layer{stage}.{block}", f"stage{stage}_block{block + 1}"
                mapping += [
                    (f"{module}.conv1", f"{layer}_conv1", "binary_conv"), (f"{module}.bn1", f"{layer}_bn1", "bn"),
                    (f"{module}.conv2", f"{layer}_conv2", "binary_conv"), (f"{module}.bn2", f"{layer}_bn2", "bn"),
                ]
                if self.linear == "fc" and stage > 1 and block == 0:  # ImageNet: float 1x1 conv + BN downsampling
                    mapping += [(f"{module}.downsample.0", f"{layer}_shortcut_conv", "conv"),
                                (f"{module}.downsample.1", f"{layer}_shortcut_bn", "bn")]
        return mapping + [("bn2", "head_bn", "bn"), (self.linear, "predictions", "linear")]


LAYOUTS = {
    layout.arch: layout
    for layout in (
        OfficialLayout("resnet20", "resnet20_1w1a (cifar/models_cifar/resnet.py)", (3, 3, 3), "linear"),
        OfficialLayout("resnet18", "resnet18_1w1a (imagenet/models_imagenet/resnet.py)", (2, 2, 2, 2), "fc",
                       unused=("bn3",)),
        OfficialLayout("resnet34", "resnet34_1w1a (imagenet/models_imagenet/resnet.py)", (3, 4, 6, 3), "fc",
                       unused=("bn3",)),
    )
}

#: per kind: PyTorch parameter → (Keras variable attribute, PyTorch layout → Keras layout)
_PARAMETERS = {
    "conv": {"weight": ("kernel", "oihw")},
    "binary_conv": {"weight": ("kernel", "oihw"), "alpha": ("alpha", "flat"), "rotate": ("theta", "flat"),
                    "R1": ("r1", "same"), "R2": ("r2", "same")},
    "bn": {"weight": ("gamma", "same"), "bias": ("beta", "same"), "running_mean": ("moving_mean", "same"),
           "running_var": ("moving_variance", "same")},
    "linear": {"weight": ("kernel", "transpose"), "bias": ("bias", "same")},
}
#: BN's step counter: accepted (optional) and not used by the forward; written back as 0
_BN_COUNTER = "num_batches_tracked"


def _to_keras(value: np.ndarray, layout: str, keras_shape) -> np.ndarray:
    if layout == "oihw":
        return value.transpose(2, 3, 1, 0)
    if layout == "transpose":
        return value.T
    return value.reshape(keras_shape)


def _to_torch_shape(keras_shape, layout: str, torch_param: str) -> tuple[int, ...]:
    if layout == "oihw":
        kh, kw, cin, cout = keras_shape
        return (cout, cin, kh, kw)
    if layout == "transpose":
        return tuple(reversed(keras_shape))
    if layout == "flat":  # alpha (out, 1, 1), rotate (out, 1, 1, 1) in the reference
        return (keras_shape[0], 1, 1) if torch_param == "alpha" else (keras_shape[0], 1, 1, 1)
    return tuple(keras_shape)


def _to_torch(value: np.ndarray, layout: str, torch_param: str) -> np.ndarray:
    if layout == "oihw":
        return value.transpose(3, 2, 0, 1)
    if layout == "transpose":
        return value.T
    return value.reshape(_to_torch_shape(value.shape, layout, torch_param))


# -- reading ---------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict in an ``.npz`` file, or in a ``.pt`` / ``.pth`` file saved by
    ``torch.save`` (its ``state_dict`` entry when it is a training checkpoint), as arrays."""
    path = Path(path)
    if not path.is_file():
        raise PortError(f"Checkpoint {path} does not exist or is not a file.")
    suffix = path.suffix.lower()
    if suffix in NPZ_SUFFIXES:
        return _read_npz(path)
    if suffix in TORCH_SUFFIXES:
        return _read_torch(path)
    raise PortError(
        f"Checkpoint {path}: unknown file type {path.suffix!r}; expected .npz, or .pt / .pth (torch.save)."
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as err:
        if "allow_pickle" in str(err):  # object arrays
            raise PortError(f"Checkpoint {path} holds arrays that only unpickling could read ({err}).") from None
        raise PortError(f"Checkpoint {path} is not a readable .npz file: {err}.") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise PortError(f"Checkpoint {path} is not a readable .npz file: {err}.") from None


def _torch_load_problem(err: Exception) -> str:
    """The informative line of a ``torch.load`` error (PyTorch's run to a page, with advice
    to load unsafely, which the zoo does not take)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else type(err).__name__


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise PortError(f"Checkpoint {path} is a PyTorch file and PyTorch is not installed: {_TORCH_HINT}.") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — pickle, zip and torch errors alike: one line
        raise PortError(
            f"Checkpoint {path} cannot be read as tensors and plain containers by "
            f"torch.load(weights_only=True) ({_torch_load_problem(err)}); the zoo unpickles nothing else."
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # a training checkpoint ({"epoch", "state_dict", ...}, as the reference saves)
    if not isinstance(loaded, dict):
        raise PortError(f"Checkpoint {path} holds a {type(loaded).__name__}, not a state dict.")
    for name, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise PortError(f"Checkpoint {path}: entry {name!r} is not a tensor ({type(value).__name__}).")
    return {str(name): _as_array(str(name), value) for name, value in loaded.items()}


# -- checking --------------------------------------------------------------------------------
def _strip_data_parallel(state_dict: dict) -> dict:
    """Names without the ``module.`` prefix ``nn.DataParallel`` adds (the ImageNet runs used it)."""
    if state_dict and all(str(name).startswith("module.") for name in state_dict):
        return {str(name)[len("module."):]: value for name, value in state_dict.items()}
    return dict(state_dict)


def detect_arch(names) -> str:
    """The official layout whose entry names overlap most with ``names``."""
    names = set(names)

    def overlap(layout):
        expected = {f"{module}.{param}" for module, _, kind in layout.modules() for param in _PARAMETERS[kind]}
        return len(expected & names) / len(expected | names)

    return max(LAYOUTS.values(), key=overlap).arch


def _layout(arch: str | None, names) -> OfficialLayout:
    arch = detect_arch(names) if arch is None else arch
    if arch not in LAYOUTS:
        raise PortError(f"Unknown official RBNN architecture {arch!r}; known: {', '.join(LAYOUTS)}.")
    return LAYOUTS[arch]


def _as_array(name: str, value) -> np.ndarray:
    """An entry as a NumPy array; a PyTorch tensor (on any device, any float type) too."""
    if hasattr(value, "detach") and hasattr(value, "is_floating_point"):
        tensor = value.detach().cpu()
        try:
            value = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
        except (TypeError, RuntimeError) as err:
            raise PortError(f"State dict entry {name!r} cannot be read as an array: {err}") from None
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise PortError(f"State dict entry {name!r} has dtype {array.dtype}, not a number type.")
    return array


def _checked_entries(state_dict: dict, layout: OfficialLayout, model: keras.Model) -> list:
    """``(Keras variable, value)`` for every parameter, all names and shapes checked first."""
    expected, assignments = set(), []
    for module, layer_name, kind in layout.modules():
        layer = model.get_layer(layer_name)
        for param, (attribute, form) in _PARAMETERS[kind].items():
            name = f"{module}.{param}"
            expected.add(name)
            variable = getattr(layer, attribute)
            if name not in state_dict:
                raise PortError(f"State dict lacks {name!r}: it is not the official {layout.reference}.")
            value = _as_array(name, state_dict[name])
            shape = _to_torch_shape(tuple(variable.shape), form, param)
            if value.shape != shape:
                raise PortError(
                    f"State dict entry {name!r} has shape {value.shape}; the official {layout.reference} "
                    f"with {model.output_shape[-1]} classes has {shape}."
                )
            if not np.all(np.isfinite(value)):
                raise PortError(f"State dict entry {name!r} holds non-finite values.")
            if param == "running_var" and np.any(value < 0):
                raise PortError(f"State dict entry {name!r} holds negative variances.")
            assignments.append((variable, _to_keras(value.astype(np.float32), form, tuple(variable.shape))))
        if kind == "bn" and f"{module}.{_BN_COUNTER}" in state_dict:
            expected.add(f"{module}.{_BN_COUNTER}")
    unused = [n for n in state_dict if n.split(".")[0] in layout.unused]
    unexpected = sorted(set(state_dict) - expected - set(unused))
    if unexpected:
        raise PortError(
            f"State dict entry {unexpected[0]!r} is not part of the official {layout.reference}"
            + (f" ({len(unexpected) - 1} more unexpected entries)." if len(unexpected) > 1 else ".")
        )
    return assignments


# -- the port --------------------------------------------------------------------------------
def rbnn_from_pytorch(
    state_dict,
    arch: str | None = None,
    *,
    input_shape=None,
    classifier_activation="softmax",
    input_mean=None,
    input_std=None,
) -> keras.Model:
    """The zoo model of an official RBNN checkpoint, computing what the authors' model does.

    Args:
      state_dict: a mapping of names to arrays (or tensors) as ``model.state_dict()``
        gives, or the path of an ``.npz`` / ``.pt`` / ``.pth`` file of one
        (:func:`read_state_dict`). ``nn.DataParallel``'s ``module.`` prefixes are dropped.
      arch: ``"resnet20"`` (CIFAR ``resnet20_1w1a``), ``"resnet18"`` or ``"resnet34"``
        (ImageNet ``resnet*_1w1a``); default: the layout the names fit best.
      input_shape: ``(height, width, channels)``; default the architecture's.
      classifier_activation: as in :func:`zoo.load` (None: the reference's logits).
      input_mean, input_std: the model's input normalisation on the 0-255 pixel scale;
        the default is the reference's (ImageNet statistics, for CIFAR too). Pass
        ``(0, 0, 0)`` and ``(1, 1, 1)`` to feed inputs the reference code already normalised.

    Returns:
      ``rbnn_<arch>_official`` with the checkpoint's weights; its classes are the
      checkpoint's. Save it with ``model.save_weights("x.h5")`` and load it back with
      ``zoo.load("rbnn_<arch>_official", weights="x.h5")``.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = read_state_dict(state_dict)
    if not hasattr(state_dict, "items"):
        raise PortError(f"Expected a state dict (a mapping of names to arrays), got {type(state_dict).__name__}.")
    state_dict = _strip_data_parallel(state_dict)
    layout = _layout(arch, state_dict)
    head = f"{layout.linear}.weight"
    if head not in state_dict or np.ndim(state_dict[head]) != 2:
        raise PortError(f"State dict lacks {head!r} (classes × features): it is not the official {layout.reference}.")
    spec = registry.get_model_spec(layout.model_name)
    model = spec.build(input_shape=input_shape, classes=int(np.shape(state_dict[head])[0]),
                       classifier_activation=classifier_activation, input_mean=input_mean, input_std=input_std)
    keras.backend.batch_set_value(_checked_entries(state_dict, layout, model))
    return model


def rbnn_state_dict(model: keras.Model) -> dict[str, np.ndarray]:
    """The official state dict of a ``rbnn_*_official`` model (inverse of :func:`rbnn_from_pytorch`):
    PyTorch names and layouts, float32, BN step counters 0 (int64)."""
    arch = model.name.removeprefix("rbnn_").removesuffix("_official")
    if model.name != f"rbnn_{arch}_official" or arch not in LAYOUTS:
        raise PortError(
            f"Model {model.name!r} is not an official RBNN layout; expected one of "
            f"{', '.join(layout.model_name for layout in LAYOUTS.values())}."
        )
    state_dict = {}
    for module, layer_name, kind in LAYOUTS[arch].modules():
        layer = model.get_layer(layer_name)
        for param, (attribute, form) in _PARAMETERS[kind].items():
            state_dict[f"{module}.{param}"] = _to_torch(getattr(layer, attribute).numpy(), form, param)
        if kind == "bn":
            state_dict[f"{module}.{_BN_COUNTER}"] = np.zeros((), np.int64)
    return state_dict


def port_to_file(checkpoint, output, arch: str | None = None) -> keras.Model:
    """Ports ``checkpoint`` (a path) and writes the model's weights to ``output`` (HDF5), atomically."""
    output = Path(output)
    if output.is_dir():
        raise PortError(f"Output path {output} is a directory; name a file, e.g. {output / 'weights.h5'}.")
    if not output.parent.is_dir():
        raise PortError(f"Cannot write {output}: directory {output.parent} does not exist.")
    model = rbnn_from_pytorch(read_state_dict(checkpoint), arch)
    with contextlib.ExitStack() as stack:
        try:
            partial = stack.enter_context(atomic_path(output))
        except OSError as err:
            raise PortError(f"Cannot write {output}: {err.strerror} ({err.filename}).") from None
        model.save_weights(str(partial), save_format="h5")
    return model
