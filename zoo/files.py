"""Writing files atomically: a file the zoo writes is complete or absent, never half written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str, suffix: str = ".part") -> Iterator[Path]:
    """A new, empty temporary file beside ``path`` for the block to write (by name, e.g.
    ``model.save_weights(partial)``); it is renamed over ``path``, with the permissions
    ``open`` would have given, when the block succeeds, and removed when it fails.

    Raises OSError when the directory cannot hold the temporary file (it must exist)."""
    path = Path(path)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(partial)
        os.chmod(partial, 0o666 & ~_umask())  # mkstemp makes it private
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: os.PathLike | str) -> Iterator:
    """A binary file handle whose content becomes ``path`` (flushed to disk) only when the
    block succeeds (:func:`atomic_path`)."""
    with atomic_path(path) as partial, open(partial, "wb") as output:
        yield output
        output.flush()
        os.fsync(output.fileno())


@contextlib.contextmanager
def atomic_directory(path: os.PathLike | str) -> Iterator[Path]:
    """A new temporary directory beside ``path`` for the block to fill; it is renamed to
    ``path`` (which must not exist, or be empty) when the block succeeds, and removed with
    its content when it fails. Its name starts with ``.<name>-``."""
    path = Path(path)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        yield scratch
        os.chmod(scratch, 0o777 & ~_umask())  # mkdtemp makes it private
        os.replace(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def atomic_write(path: os.PathLike | str, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` atomically, creating its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as output:
        output.write(data.encode() if isinstance(data, str) else data)
