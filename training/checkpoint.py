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
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
from zoo import registry
from zoo.files import atomic_directory

from training.settings import BY_KEY, value_problem

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
_PREFIX = "ckpt"
_EPOCH_DIR = re.compile(r"epoch-(\d{4,})")


class ResumeError(ValueError):
    """A checkpoint that does not belong to the run being resumed, or one in the way."""


def latest_checkpoint(output: os.PathLike | str) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    root = Path(output) / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _EPOCH_DIR.fullmatch(p.name))]
    return max(found)[1] if found else None


def read_state(checkpoint: Path) -> dict:
    """The state of a checkpoint to resume from, checked before anything is built: a
    ``state.json`` with possible settings and at most the run's epochs, next to checkpoint
    files that read whole (every tensor: a truncated, damaged or missing file is found
    here, not when the optimizer restores its slots after the first step)."""
    try:
        state = _read_json(checkpoint / STATE_FILE)
        _check_state(state)
    except (OSError, ValueError) as err:
        raise ResumeError(f"Cannot resume from {checkpoint}: {STATE_FILE}: {err}") from None
    try:
        reader = tf.train.load_checkpoint(str(checkpoint / _PREFIX))
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except (tf.errors.OpError, IndexError) as err:  # IndexError: TensorFlow's "read less bytes than requested"
        raise ResumeError(
            f"Cannot resume from {checkpoint}: its checkpoint files are damaged or incomplete "
            f"({str(err).splitlines()[0]}). Start a new run (another --output)."
        ) from None
    return state


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except RecursionError:
        raise ValueError("nested too deeply to be JSON this zoo wrote.") from None


def _check_state(state) -> None:
    if not (isinstance(state, dict) and isinstance(state.get("run"), dict) and isinstance(state.get("history"), list)):
        raise ValueError("not a zoo training state (needs \"run\", \"epochs_done\" and \"history\").")
    run, done = state["run"], state.get("epochs_done")
    missing = [key for key in ("model", "dataset", "method", "epochs", "batch_size") if run.get(key) is None]
    if missing:
        raise ValueError(f"the run's settings lack {', '.join(missing)}.")
    check_settings(run)
    if isinstance(done, bool) or not isinstance(done, int) or done < 1:
        raise ValueError(f"epochs_done must be a positive integer, got {done!r}.")
    if done > run["epochs"]:
        raise ValueError(f"epochs_done is {done}, more than the run's {run['epochs']} epochs.")
    if len(state["history"]) != done:
        raise ValueError(f"the history has {len(state['history'])} rows for {done} finished epochs.")


def check_settings(settings: dict, name=str) -> None:
    """Refuses run settings no run can have (None: not given, the recipe's default), naming
    each as ``name(key)`` (a flag, or a field of ``state.json``): each setting's value of the
    wrong kind (:data:`training.settings.SETTINGS`: epochs that are not a positive integer, a
    negative seed, a learning rate that is not positive, ...), a method that is not a
    registered scheme, fewer training images than one batch. Raises ValueError."""
    for key, value in settings.items():
        kind = BY_KEY[key].kind if key in BY_KEY else "name" if key in ("model", "dataset") else None
        problem = value_problem(kind, value) if kind is not None else None
        if problem is not None:
            raise ValueError(f"{name(key)} {problem}.")
    if settings.get("method") is not None:
        try:
            registry.get_scheme(settings["method"])
        except ValueError as err:
            raise ValueError(f"{name('method')}: {err}") from None
    images, batch = settings.get("train_images"), settings.get("batch_size")
    if images is not None and batch is not None and images < batch:
        raise ValueError(f"{name('train_images')} {images} is fewer than one batch ({name('batch_size')} {batch}): "
                         "no training step would run. Use more images or a smaller batch.")


def checkpoint_of(trainable: keras.Model) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=trainable)


def write_checkpoint(trainable: keras.Model, state: dict, root: Path) -> Path:
    """Writes ``trainable`` and ``state`` as ``root/epoch-NNNN`` (NNNN = finished epochs),
    atomically, and removes the older checkpoints in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{state['epochs_done']:04d}"
    with atomic_directory(final) as scratch:
        checkpoint_of(trainable).write(str(scratch / _PREFIX))
        (scratch / STATE_FILE).write_text(json.dumps(state, indent=1))
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
    # The slots wait for the optimizer's first step; a finished run takes none, and without
    # this TensorFlow warns about every slot left unrestored when the status is collected.
    status.expect_partial()
    return _read_json(checkpoint / STATE_FILE)


def check_resumable(stored: dict, requested: dict, checkpoint: Path) -> dict:
    """The run settings to resume with: the stored ones, which ``requested`` (None = not
    given) must not contradict. Raises :class:`ResumeError` naming the difference."""
    for key in ("model", "dataset"):
        if requested[key] != stored[key]:
            raise ResumeError(
                f"--resume: the checkpoint in {checkpoint} is of {stored['model']} on {stored['dataset']}, "
                f"not {requested['model']} on {requested['dataset']}. Use another --output for a new run."
            )
    conflicts = [f"{key} {requested[key]!r} (the run has {stored.get(key)!r})" for key in requested
                 if requested[key] is not None and requested[key] != stored.get(key)]
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
