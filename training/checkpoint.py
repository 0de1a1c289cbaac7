"""Per-epoch checkpoints of a training run: atomic, resumable, for plain and wrapped models.

A checkpoint is a ``tf.train.Checkpoint`` of the model ``fit`` drives — the zoo model, or
the recipe's wrapper with its student, teacher and any extra networks — which tracks the
optimizer(s) assigned to it (slots, iteration count, learning rate) and every layer
variable, so a method's state living in layer weights travels with it (RBNN: rotations
R1, R2 and the sign schedule's t, k). Next to it ``state.json`` holds the run's settings,
the number of finished epochs and the history so far.

Layout: ``<output>/checkpoints/epoch-NNNN/{ckpt.*, state.json}``. A checkpoint is written
into a temporary directory and renamed into place, so a directory named ``epoch-NNNN``
is always complete; the newest one is the resume point and older ones are removed after
the rename. A run killed at any moment therefore resumes from its last finished epoch.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
_PREFIX = "ckpt"
_EPOCH_DIR = re.compile(r"epoch-(\d{4,})")


class ResumeError(ValueError):
    """A checkpoint that does not belong to the run being resumed, or one in the way."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: str | bytes) -> None:
    """Writes ``data`` to a temporary file next to ``path``, then renames it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(handle.name, 0o666 & ~_umask())  # as open() would have created it
        os.replace(handle.name, path)
    finally:
        Path(handle.name).unlink(missing_ok=True)


def latest_checkpoint(output: os.PathLike | str) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    root = Path(output) / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _EPOCH_DIR.fullmatch(p.name))]
    return max(found)[1] if found else None


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


def checkpoint_of(trainable: keras.Model) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=trainable)


def write_checkpoint(trainable: keras.Model, state: dict, root: Path) -> Path:
    """Writes ``trainable`` and ``state`` as ``root/epoch-NNNN`` (NNNN = finished epochs),
    atomically, and removes the older checkpoints in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{state['epochs_done']:04d}"
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}-"))
    os.chmod(scratch, 0o777 & ~_umask())
    try:
        checkpoint_of(trainable).write(str(scratch / _PREFIX))
        (scratch / STATE_FILE).write_text(json.dumps(state, indent=1))
        os.replace(scratch, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for old in root.iterdir():
        if old != final and (_EPOCH_DIR.fullmatch(old.name) or old.name.startswith(".epoch-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def restore_checkpoint(trainable: keras.Model, checkpoint: Path) -> dict:
    """Restores a checkpoint into a freshly built ``trainable`` (compiled, so that its
    optimizer exists); returns its state. Optimizer slots are restored when the optimizer
    creates them, at its first step."""
    status = checkpoint_of(trainable).read(str(checkpoint / _PREFIX))
    try:
        status.assert_existing_objects_matched()
    except AssertionError as err:
        raise ResumeError(f"Checkpoint {checkpoint} does not fit the model being trained: {err}") from err
    return read_state(checkpoint)


def check_resumable(stored: dict, requested: dict, checkpoint: Path) -> dict:
    """The run settings to resume with: the stored ones, which ``requested`` (None = not
    given) must not contradict. Raises :class:`ResumeError` naming the difference."""
    for key in ("model", "dataset"):
        if requested[key] != stored[key]:
            raise ResumeError(
                f"--resume: the checkpoint in {checkpoint} is of {stored['model']} on {stored['dataset']}, "
                f"not {requested['model']} on {requested['dataset']}. Use another --output for a new run."
            )
    conflicts = [f"{key} {requested[key]!r} (the run has {stored[key]!r})" for key in stored
                 if requested.get(key) is not None and requested[key] != stored[key]]
    if conflicts:
        raise ResumeError(
            f"--resume: the run in {checkpoint.parent.parent} was started with other settings: "
            f"{'; '.join(conflicts)}. Resume with the same settings (or leave them out)."
        )
    return dict(stored)


def is_finite(logs: dict | None, model: keras.Model) -> bool:
    """Whether the epoch's losses and every trainable variable are finite."""
    losses = [v for k, v in (logs or {}).items() if k in ("loss", "val_loss")]
    return all(math.isfinite(float(v)) for v in losses) and all(
        np.isfinite(v.numpy()).all() for v in model.trainable_variables
    )


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite training loss (checked per batch), or at
    the end of an epoch whose validation loss or weights are not finite, and remembers
    where. (Keras' ``TerminateOnNaN`` stops too, but says nothing about what is kept.)"""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.where: tuple[int, int | None] | None = None  # (epoch, batch or None for the epoch's end), from 1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = (self.epoch + 1, batch + 1)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.where is None and not is_finite(logs, self.model):
            self.where = (epoch + 1, None)
            self.model.stop_training = True


class EpochCheckpoint(keras.callbacks.Callback):
    """Appends each finished epoch to the history and checkpoints the run, unless
    ``guard`` saw a non-finite loss or weights (then the last good checkpoint stays).

    ``on_commit(history)`` runs after each checkpoint (the chief writes its logs there).
    Every worker of a multi-worker run must write (``root``: its own directory).
    """

    def __init__(self, root: Path, settings: dict, history: list[dict], guard: StopOnNaN, on_commit=None):
        super().__init__()
        self.root = root
        self.settings = settings
        self.history = history
        self.guard = guard
        self.on_commit = on_commit
        self.last_good: Path | None = latest_checkpoint(root.parent)
        self._started = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.where is not None:
            return
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
               "seconds": round(time.perf_counter() - self._started, 2)}
        self.history.append(row)
        state = {"run": self.settings, "epochs_done": epoch + 1, "history": self.history}
        self.last_good = write_checkpoint(self.model, state, self.root)
        if self.on_commit is not None:
            self.on_commit(self.history)
