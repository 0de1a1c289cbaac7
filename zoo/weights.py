"""Verified fetching of model weight files (HDF5).

Weights come from a local path, a ``file://`` URL or an ``http(s)://`` URL.
Downloads are cached under ``$ZOO_HOME/weights`` (default ``~/.cache/zoo``),
checked against a sha256 digest when one is known and validated as HDF5
before they are moved into place atomically. This module knows nothing of
models.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

import h5py
from tqdm import tqdm

__all__ = [
    "ChecksumError",
    "DownloadError",
    "InvalidWeightsFile",
    "OfflineError",
    "WeightsError",
    "cache_dir",
    "fetch",
    "is_offline",
    "remove_if_cached",
    "sha256_file",
    "validate_hdf5",
    "zoo_home",
]

logger = logging.getLogger(__name__)

#: Delay before the second download attempt; doubles for each further attempt.
RETRY_BACKOFF = 0.5
#: Upper bound for a single delay between download attempts.
RETRY_BACKOFF_MAX = 4.0

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_CHUNK_SIZE = 1 << 20
_USER_AGENT = "zoo-weights"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_OFFLINE_VALUES = {"1", "true", "yes"}


class WeightsError(ValueError):
    """A weights file could not be obtained or is unusable."""


class ChecksumError(WeightsError):
    """The sha256 digest of a weights file differs from the expected one."""


class DownloadError(WeightsError):
    """A weights file could not be downloaded."""


class OfflineError(WeightsError):
    """Offline mode is on and the weights file is not in the cache."""


class InvalidWeightsFile(WeightsError):
    """A weights file is not a readable HDF5 file (e.g. truncated)."""


class _TransientError(Exception):
    """A download failure worth retrying; the message is the cause."""


def zoo_home() -> Path:
    """Return ``$ZOO_HOME`` if set, else ``~/.cache/zoo``."""
    home = os.environ.get("ZOO_HOME")
    if home:
        return Path(home).expanduser()
    return Path.home() / ".cache" / "zoo"


def cache_dir() -> Path:
    """Return the directory downloaded weights are cached in."""
    return zoo_home() / "weights"


def is_offline() -> bool:
    """Return whether ``ZOO_OFFLINE`` forbids downloads."""
    return os.environ.get("ZOO_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def validate_hdf5(path: str | os.PathLike[str]) -> None:
    """Raise :class:`InvalidWeightsFile` unless ``path`` is a readable HDF5 file."""
    problem = _hdf5_problem(Path(path))
    if problem is not None:
        raise InvalidWeightsFile(f"Invalid weights file {path}: {problem}.")


def remove_if_cached(path: str | os.PathLike[str]) -> bool:
    """Delete ``path`` (and its then empty key directory) if it lies in the cache.

    Returns whether a file was deleted. Files outside :func:`cache_dir` are
    never touched.
    """
    path = Path(path).resolve()
    cache = cache_dir().resolve()
    if not path.is_relative_to(cache) or not path.is_file():
        return False
    path.unlink()
    if path.parent != cache:
        try:
            path.parent.rmdir()
        except OSError:  # not empty
            pass
    return True


def fetch(
    source: str | os.PathLike[str],
    sha256: str | None = None,
    *,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    filename: str | None = None,
) -> Path:
    """Return a local, verified path to the weights file ``source``.

    ``source`` is a local path, a ``file://`` URL or an ``http(s)://`` URL; a
    URL may end in ``#sha256=<hex>``, used when ``sha256`` is not given.
    Local files are verified in place (never copied or deleted). Remote files
    are downloaded into :func:`cache_dir` unless already cached there, with up
    to ``retries`` attempts for transient failures.
    """
    if retries < 1:
        raise ValueError(f"retries must be at least 1, got {retries}")
    if sha256 is not None:
        sha256 = _normalize_sha256(sha256, source)

    if isinstance(source, os.PathLike):
        return _fetch_local(Path(source), sha256)

    parts = urllib.parse.urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https", "file"}:
        return _fetch_local(Path(source).expanduser(), sha256)

    sha256 = _merge_fragment_sha256(sha256, parts.fragment, source)
    if scheme == "file":
        if parts.netloc not in {"", "localhost"}:
            raise WeightsError(f"Unsupported file URL {source}: remote host {parts.netloc!r}.")
        return _fetch_local(Path(urllib.request.url2pathname(parts.path)), sha256)

    url = urllib.parse.urlunsplit(parts._replace(fragment=""))
    return _fetch_url(url, sha256, progress, retries, timeout, _cache_filename(url, filename))


def _fetch_local(path: Path, sha256: str | None) -> Path:
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist or is not a file.")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise ChecksumError(
                f"Checksum mismatch for weights file {path}: "
                f"expected sha256 {sha256}, got {actual}."
            )
    validate_hdf5(path)
    return path


def _fetch_url(
    url: str,
    sha256: str | None,
    progress: bool,
    retries: int,
    timeout: float,
    filename: str,
) -> Path:
    key = sha256 or hashlib.sha256(url.encode()).hexdigest()[:16]
    target = cache_dir() / key / filename

    if target.is_file():
        problem = _cached_file_problem(target, sha256)
        if problem is None:
            return target
        logger.warning(
            "Cached weights %s for %s are unusable (%s); deleting them.", target, url, problem
        )
        target.unlink(missing_ok=True)

    if is_offline():
        raise OfflineError(
            f"ZOO_OFFLINE={os.environ['ZOO_OFFLINE']} is set and {url} is not in the "
            f"weights cache (expected at {target}); unset ZOO_OFFLINE or place the file there."
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, retries + 1):
        try:
            _download(url, target, sha256, progress, timeout)
            return target
        except _TransientError as exc:
            cause = str(exc)
            if attempt < retries:
                delay = min(RETRY_BACKOFF * 2 ** (attempt - 1), RETRY_BACKOFF_MAX)
                logger.warning(
                    "Downloading %s failed (%s); retrying in %.1f s (attempt %d of %d).",
                    url,
                    cause,
                    delay,
                    attempt + 1,
                    retries,
                )
                time.sleep(delay)
    raise DownloadError(f"Could not download {url} after {retries} attempt(s): {cause}.")


def _download(url: str, target: Path, sha256: str | None, progress: bool, timeout: float) -> None:
    """Download ``url`` once into ``target``; the file appears only if fully verified."""
    tmp = tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part")
    tmp_path = Path(tmp.name)
    try:
        with tmp:
            received, expected, actual = _stream(url, tmp, progress, timeout, target.name)
        if expected is not None and received != expected:
            raise _TransientError(f"truncated body, received {received} of {expected} bytes")
        if sha256 is not None and actual != sha256:
            raise ChecksumError(
                f"Checksum mismatch for weights downloaded from {url}: "
                f"expected sha256 {sha256}, got {actual}. The file was not cached."
            )
        problem = _hdf5_problem(tmp_path)
        if problem is not None:
            raise InvalidWeightsFile(
                f"Weights downloaded from {url} are not usable: {problem}. The file was not cached."
            )
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _stream(
    url: str, out: BinaryIO, progress: bool, timeout: float, desc: str
) -> tuple[int, int | None, str]:
    """Write the body of ``url`` to ``out``; return (bytes received, Content-Length, sha256)."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = _content_length(response)
            with tqdm(
                total=expected,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
                file=sys.stderr,
            ) as bar:
                while chunk := response.read(_CHUNK_SIZE):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        exc.close()
        cause = f"HTTP {exc.code} {exc.reason}"
        if exc.code == 429 or exc.code >= 500:
            raise _TransientError(cause) from exc
        raise DownloadError(f"Could not download {url}: {cause} (not retried).") from exc
    except urllib.error.URLError as exc:
        raise _TransientError(f"connection failed: {exc.reason}") from exc
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _TransientError(f"{type(exc).__name__}: {exc}") from exc
    return received, expected, digest.hexdigest()


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _cached_file_problem(path: Path, sha256: str | None) -> str | None:
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            return f"sha256 {actual} instead of {sha256}"
    return _hdf5_problem(path)


def _hdf5_problem(path: Path) -> str | None:
    """Return why ``path`` is not a readable HDF5 file, or None if it is."""
    with open(path, "rb") as f:
        if f.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            return "not an HDF5 file (missing HDF5 signature)"
    try:
        with h5py.File(path, "r") as h5:
            _read_attrs("/", h5)
            h5.visititems(_read_attrs)
    except Exception as exc:  # h5py reports damage with various exception types
        return f"unreadable or truncated HDF5 file ({type(exc).__name__}: {exc})"
    return None


def _read_attrs(_name: str, obj: h5py.HLObject) -> None:
    """Read every attribute of ``obj``, forcing HDF5 to parse its object header."""
    dict(obj.attrs)


def _normalize_sha256(value: str, source: str | os.PathLike[str]) -> str:
    digest = value.strip().lower()
    if not _SHA256_RE.fullmatch(digest):
        raise ValueError(f"Invalid sha256 {value!r} for {source}: expected 64 hex digits.")
    return digest


def _merge_fragment_sha256(sha256: str | None, fragment: str, source: str) -> str | None:
    if not fragment:
        return sha256
    name, _, value = fragment.partition("=")
    if name.lower() != "sha256":
        raise ValueError(f"Unsupported URL fragment in {source}: expected '#sha256=<hex>'.")
    from_url = _normalize_sha256(value, source)
    if sha256 is not None and sha256 != from_url:
        raise ValueError(
            f"Conflicting sha256 for {source}: "
            f"argument {sha256} differs from URL fragment {from_url}."
        )
    return from_url


def _cache_filename(url: str, filename: str | None) -> str:
    if filename is None:
        name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
        if name in {"", ".", ".."}:
            raise ValueError(f"Cannot derive a file name from {url}; pass filename=.")
        return name
    if filename in {"", ".", ".."} or Path(filename).name != filename:
        raise ValueError(f"filename must be a plain file name, got {filename!r}.")
    return filename
