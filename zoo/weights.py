"""Verified fetching of model weight files (HDF5).

Weights come from a local path, a ``file://`` URL or an ``http(s)://`` URL.
Downloads are cached under ``$ZOO_HOME/weights`` (default ``~/.cache/zoo``),
checked against a sha256 digest (the one given, or for a download without one
the digest recorded when it was fetched) and validated as self-contained HDF5
before they are moved into place atomically. Processes fetching the same URL
take a lock and download it once. This module knows nothing of models.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import posixpath
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterator

import h5py
from tqdm import tqdm

from zoo.files import atomic_path

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
    "self_containment_problem",
    "sha256_file",
    "validate_hdf5",
    "zoo_home",
]

logger = logging.getLogger(__name__)

#: Delay before the second download attempt; doubles for each further attempt.
RETRY_BACKOFF = 0.5
#: Upper bound for a single delay between download attempts.
RETRY_BACKOFF_MAX = 4.0
#: Seconds without a byte from the server before an attempt fails (and may be retried).
STALL_TIMEOUT = 30.0
#: Seconds between attempts to take a lock another process holds.
LOCK_POLL_INTERVAL = 0.05

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_CHUNK_SIZE = 1 << 20
_USER_AGENT = "zoo-weights"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_OFFLINE_TRUE = ("1", "true", "yes", "on")
_OFFLINE_FALSE = ("0", "false", "no", "off", "")
_PART_SUFFIX = ".part"
_DIGEST_SUFFIX = ".sha256"


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
    """Return whether ``ZOO_OFFLINE`` forbids downloads (a value not yes/no-like raises)."""
    value = os.environ.get("ZOO_OFFLINE", "")
    if value.strip().lower() in _OFFLINE_TRUE:
        return True
    if value.strip().lower() in _OFFLINE_FALSE:
        return False
    raise WeightsError(
        f"ZOO_OFFLINE={value!r} is neither true ({', '.join(_OFFLINE_TRUE)}) "
        f"nor false ({', '.join(_OFFLINE_FALSE[:-1])} or empty)."
    )


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
    _digest_record(path).unlink(missing_ok=True)
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
    timeout: float = 600.0,
    filename: str | None = None,
) -> Path:
    """Return a local, verified path to the weights file ``source``.

    ``source`` is a local path, a ``file://`` URL or an ``http(s)://`` URL; a
    URL may end in ``#sha256=<hex>``, used when ``sha256`` is not given.
    Local files are verified in place (never copied or deleted). Remote files
    are downloaded into :func:`cache_dir` unless already cached there, with up
    to ``retries`` attempts for transient failures, all within ``timeout``
    seconds (waiting for another process's download of the same URL included).
    A download without a known sha256 has its digest recorded beside it and
    checked on every later use.
    """
    if retries < 1:
        raise ValueError(f"retries must be at least 1, got {retries}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
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
    offline = is_offline()
    deadline = time.monotonic() + timeout
    key = sha256 or hashlib.sha256(url.encode()).hexdigest()[:16]
    target = cache_dir() / key / filename
    if target.is_file() and _cached_file_problem(target, sha256) is None:
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with _download_lock(key, url, deadline, timeout):
        _remove_stale_partial_files(held_key=key)
        if target.is_file():  # another process may have fetched it while we waited
            problem = _cached_file_problem(target, sha256)
            if problem is None:
                return target
            logger.warning(
                "Cached weights %s for %s are unusable (%s); deleting them.", target, url, problem
            )
            target.unlink(missing_ok=True)
            _digest_record(target).unlink(missing_ok=True)

        if offline:
            raise OfflineError(
                f"ZOO_OFFLINE={os.environ['ZOO_OFFLINE']} is set and {url} is not in the "
                f"weights cache (expected at {target}); unset ZOO_OFFLINE or place the file there."
            )
        _download_with_retries(url, target, sha256, progress, retries, deadline, timeout)
    return target


def _download_with_retries(
    url: str,
    target: Path,
    sha256: str | None,
    progress: bool,
    retries: int,
    deadline: float,
    timeout: float,
) -> None:
    for attempt in range(1, retries + 1):
        try:
            _download(url, target, sha256, progress, deadline)
            return
        except _TransientError as exc:
            cause = str(exc)
        if attempt == retries:
            break
        delay = min(RETRY_BACKOFF * 2 ** (attempt - 1), RETRY_BACKOFF_MAX)
        if time.monotonic() + delay >= deadline:
            raise DownloadError(
                f"Could not download {url} within timeout={timeout:g} s "
                f"({attempt} attempt(s), last: {cause})."
            )
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


@contextlib.contextmanager
def _download_lock(key: str, url: str, deadline: float, timeout: float) -> Iterator[None]:
    """Hold the lock of cache key ``key`` (waiting at most until ``deadline``).

    The lock files stay in place: deleting a lock file another process has open
    would let a third process lock a new file of the same name at the same time.
    """
    path = _lock_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as lock:
        while not _try_lock(lock):
            if time.monotonic() >= deadline:
                raise DownloadError(
                    f"Could not download {url} within timeout={timeout:g} s: another "
                    f"process was still downloading it (it holds {path})."
                )
            time.sleep(LOCK_POLL_INTERVAL)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _lock_path(key: str) -> Path:
    return zoo_home() / "locks" / f"{key}.lock"


def _try_lock(lock: BinaryIO) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _remove_stale_partial_files(held_key: str) -> None:
    """Delete what killed downloads left behind: partial files no live download writes.

    Only the holder of a key's lock writes partial files under that key, so the
    partial files of a key whose lock is free (or held by this very call) are stale.
    """
    for key_dir in sorted({part.parent for part in cache_dir().glob(f"*/*{_PART_SUFFIX}")}):
        if key_dir.name == held_key:
            _remove_partial_files(key_dir)
            continue
        with open(_lock_path(key_dir.name), "ab") as lock:
            if _try_lock(lock):
                _remove_partial_files(key_dir)
                fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_partial_files(key_dir: Path) -> None:
    for part in key_dir.glob(f"*{_PART_SUFFIX}"):
        logger.info("Deleting %s, left by an interrupted download.", part)
        part.unlink(missing_ok=True)


def _download(url: str, target: Path, sha256: str | None, progress: bool, deadline: float) -> None:
    """Download ``url`` once into ``target``; the file appears only if fully verified."""
    with atomic_path(target, suffix=_PART_SUFFIX) as part:
        with open(part, "wb") as out:
            received, expected, actual = _stream(url, out, progress, deadline, target.name)
        if expected is not None and received != expected:
            raise _TransientError(f"truncated body, received {received} of {expected} bytes")
        if sha256 is not None and actual != sha256:
            raise ChecksumError(
                f"Checksum mismatch for weights downloaded from {url}: "
                f"expected sha256 {sha256}, got {actual}. The file was not cached."
            )
        problem = _hdf5_problem(part)
        if problem is not None:
            raise InvalidWeightsFile(
                f"Weights downloaded from {url} are not usable: {problem}. The file was not cached."
            )
        if sha256 is None:
            _record_digest(target, actual)


def _digest_record(target: Path) -> Path:
    """The file beside ``target`` holding the sha256 it had when it was downloaded."""
    return target.with_name(target.name + _DIGEST_SUFFIX)


def _record_digest(target: Path, digest: str) -> None:
    with atomic_path(_digest_record(target), suffix=_PART_SUFFIX) as part:
        part.write_text(f"{digest}  {target.name}\n")


def _recorded_digest(target: Path) -> str | None:
    try:
        fields = _digest_record(target).read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    return fields[0] if fields and _SHA256_RE.fullmatch(fields[0]) else None


def _stream(
    url: str, out: BinaryIO, progress: bool, deadline: float, desc: str
) -> tuple[int, int | None, str]:
    """Write the body of ``url`` to ``out``; return (bytes received, Content-Length, sha256).

    Every wait for the server ends at ``deadline`` or after :data:`STALL_TIMEOUT`
    seconds without data, whichever comes first.
    """
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=_wait_limit(deadline)) as response:
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
                while chunk := _read_some(response, deadline):
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


def _read_some(response: http.client.HTTPResponse, deadline: float) -> bytes:
    """Return the next bytes of the body (b"" at its end), waiting no longer than allowed."""
    if response.fp is not None:  # None once the whole body has been read
        # urllib keeps the socket only inside the response; its timeout bounds each
        # single wait, so it is shortened as the deadline nears.
        response.fp.raw._sock.settimeout(_wait_limit(deadline))
    return response.read1(_CHUNK_SIZE)


def _wait_limit(deadline: float) -> float:
    """Seconds a single wait for the server may last; raises TimeoutError past ``deadline``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out: the time limit ran out")
    return min(remaining, STALL_TIMEOUT)


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _cached_file_problem(path: Path, sha256: str | None) -> str | None:
    expected = sha256 or _recorded_digest(path)
    if expected is None:
        return f"no sha256 recorded in {_digest_record(path)}"
    actual = sha256_file(path)
    if actual != expected:
        return f"sha256 {actual} instead of {expected}"
    return _hdf5_problem(path)


def _hdf5_problem(path: Path) -> str | None:
    """Return why ``path`` is not a readable HDF5 file, or None if it is."""
    with open(path, "rb") as f:
        if f.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            return "not an HDF5 file (missing HDF5 signature)"
    try:
        with h5py.File(path, "r") as h5:
            problem = self_containment_problem(h5)
            if problem is not None:
                return problem
            _read_attrs("/", h5)
            h5.visititems(_read_attrs)
    except Exception as exc:  # h5py reports damage with various exception types
        return f"unreadable or truncated HDF5 file ({type(exc).__name__}: {exc})"
    return None


def self_containment_problem(h5: h5py.File) -> str | None:
    """Return why reading ``h5`` could read data from outside it, or None if it cannot.

    External links, soft links, external storage and virtual datasets make a read
    of the file read other files (any file the process may read), so they are
    refused; Keras writes none of them. Only metadata is read here.
    """

    def problem(name: str, link: h5py.HardLink | h5py.SoftLink | h5py.ExternalLink) -> str | None:
        where = repr("/" + name)
        if isinstance(link, h5py.ExternalLink):
            return f"{where} is an external link to {link.path!r} in {link.filename!r}"
        if isinstance(link, h5py.SoftLink):
            return f"{where} is a soft link to {link.path!r}"
        obj = h5[name]
        if isinstance(obj, h5py.Dataset):
            if obj.external:
                files = ", ".join(repr(os.fsdecode(entry[0])) for entry in obj.external)
                return f"dataset {where} keeps its data in external file(s) {files}"
            if obj.is_virtual:
                return f"dataset {where} is a virtual dataset (its data lies in other datasets)"
        return None

    found = h5.visititems_links(problem)
    return None if found is None else f"{found}; a weights file must hold all its data itself"


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
