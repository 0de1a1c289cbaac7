"""Tests for zoo.weights against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import ast
import collections
import fcntl
import hashlib
import http.server
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

from zoo import weights
from zoo.weights import (
    ChecksumError,
    DownloadError,
    InvalidWeightsFile,
    OfflineError,
    WeightsError,
    cache_dir,
    fetch,
    remove_if_cached,
    sha256_file,
    validate_hdf5,
)

FLAKY_FAILURES = 2
SLOW_DELAY = 1.0
DRIP_INTERVAL = 0.2
DRIP_SECONDS = 4.0
PIECES = 10
PIECE_DELAY = 0.05

#: fetches one URL in a separate process with this very zoo.weights module, loaded by
#: path (it imports nothing of zoo), once the file argv[3] exists; prints the path
CHILD = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("zoo_weights", sys.argv[1])
weights = importlib.util.module_from_spec(spec)
spec.loader.exec_module(weights)
print("ready", flush=True)
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
print(weights.fetch(sys.argv[2], progress=False), flush=True)
"""


def make_h5(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "test"
        group = f.create_group("layer")
        group.attrs["weight_names"] = ["kernel"]
        group.create_dataset("kernel", data=rng.random((64, 64), dtype=np.float32))
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Server:
    base: str
    good: bytes
    other: bytes
    counts: collections.Counter = field(default_factory=collections.Counter)

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    good = make_h5(tmp_path / "good.h5", seed=0).read_bytes()
    other = make_h5(tmp_path / "other.h5", seed=1).read_bytes()
    state = Server(base="", good=good, other=other)
    lock = threading.Lock()
    release = threading.Event()  # ends the handlers still stalling at teardown

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send_body(self, body: bytes, length: int | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

        def send_head(self, length: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def send_pieces(self, pieces: list[bytes], delay: float) -> None:
            """Sends ``pieces`` of the body ``delay`` s apart (until the client hangs up)."""
            self.close_connection = True
            try:
                for piece in pieces:
                    self.wfile.write(piece)
                    self.wfile.flush()
                    if release.wait(delay):
                        return
            except ConnectionError:
                pass

        def do_GET(self):
            name = self.path.split("?")[0].lstrip("/").split("/")[-1]
            with lock:
                state.counts[name] += 1
                count = state.counts[name]
            if name == "good.h5":
                self.send_body(good)
            elif name == "wrong.h5":
                self.send_body(other)
            elif name == "garbage.h5":
                self.send_body(b"<html>login required</html>")
            elif name == "truncated.h5":
                self.close_connection = True
                self.send_body(good[: len(good) // 2], length=len(good))
            elif name == "error500.h5":
                self.send_error(500)
            elif name == "flaky.h5":
                if count <= FLAKY_FAILURES:
                    self.send_error(500)
                else:
                    self.send_body(good)
            elif name == "busy.h5":
                self.send_error(429)
            elif name == "drip.h5":  # a byte every DRIP_INTERVAL s, then hangs up
                self.send_head(len(good))
                drips = int(DRIP_SECONDS / DRIP_INTERVAL)
                self.send_pieces([good[i : i + 1] for i in range(drips)], DRIP_INTERVAL)
            elif name == "stall.h5":  # first request: half the body, then nothing
                self.send_head(len(good))
                if count == 1:
                    self.send_pieces([good[: len(good) // 2]], delay=30.0)
                else:
                    self.send_pieces([good], delay=0)
            elif name == "pieces.h5":  # the body in PIECES pieces, PIECE_DELAY s apart
                self.send_head(len(good))
                size = -(-len(good) // PIECES)
                self.send_pieces([good[i : i + size] for i in range(0, len(good), size)], PIECE_DELAY)
            elif name == "slow.h5":
                time.sleep(SLOW_DELAY)
                try:
                    self.send_body(good)
                except ConnectionError:  # the client timed out and hung up
                    pass
            else:
                self.send_error(404)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "RETRY_BACKOFF", 0.0)
    return tmp_path / "home"


def cached_files() -> list[Path]:
    root = cache_dir()
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def start_fetch_process(url: str, go: Path) -> subprocess.Popen:
    """A process that fetches ``url`` once the file ``go`` exists (already importing nothing)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, weights.__file__, url, str(go)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline() == "ready\n"
    return child


def wait_for(condition, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)
    return result


# --- environment -----------------------------------------------------------


def test_zoo_home_and_cache_dir_follow_env(tmp_path, monkeypatch):
    assert weights.zoo_home() == tmp_path / "home"
    assert cache_dir() == tmp_path / "home" / "weights"
    monkeypatch.delenv("ZOO_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert weights.zoo_home() == tmp_path / "user" / ".cache" / "zoo"


@pytest.mark.parametrize(
    "value, expected",
    [
        *[(v, True) for v in ("1", "true", "YES", "on", "On", " yes ")],
        *[(v, False) for v in ("0", "false", "no", "off", "OFF", "", " ")],
    ],
)
def test_is_offline(monkeypatch, value, expected):
    monkeypatch.setenv("ZOO_OFFLINE", value)
    assert weights.is_offline() is expected


@pytest.mark.parametrize("value", ["2", "maybe", "offline", "tru"])
def test_unrecognised_offline_value_is_refused(server, monkeypatch, value):
    monkeypatch.setenv("ZOO_OFFLINE", value)
    with pytest.raises(WeightsError) as info:
        fetch(server.url("good.h5"), progress=False)
    message = str(info.value)
    assert f"ZOO_OFFLINE={value!r} is neither true (1, true, yes, on) nor false (0, false, no, off" in message
    assert server.total == 0


def _imported_modules(path: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "" if node.level == 0 else ".")
    return imported


def test_module_imports_nothing_of_models():
    """zoo.weights uses the zoo's atomic-write helpers (zoo.files), which import only the
    standard library; nothing else of the zoo, and nothing of TensorFlow, Keras or Larq."""
    imported = _imported_modules(Path(weights.__file__))
    tops = {name.split(".")[0] for name in imported - {"zoo.files"}}
    assert not tops & {"tensorflow", "keras", "tf_keras", "larq", "zoo", "."}
    files = _imported_modules(Path(weights.__file__).with_name("files.py"))
    assert {name.split(".")[0] for name in files} <= set(sys.stdlib_module_names) | {"__future__"}


def test_sha256_file(tmp_path):
    path = tmp_path / "blob"
    data = np.random.default_rng(0).bytes(3 << 20)
    path.write_bytes(data)
    assert sha256_file(path) == sha(data)


# --- HDF5 validation -------------------------------------------------------


def test_validate_hdf5_accepts_valid_file(tmp_path):
    validate_hdf5(make_h5(tmp_path / "w.h5"))


def test_validate_hdf5_rejects_non_hdf5(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"not weights at all" * 100)
    with pytest.raises(InvalidWeightsFile, match="not an HDF5 file") as info:
        validate_hdf5(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_validate_hdf5_rejects_truncated_file(tmp_path, fraction):
    path = make_h5(tmp_path / "w.h5")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InvalidWeightsFile, match="truncated") as info:
        validate_hdf5(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("attribute", [b"backend", b"weight_names"])
def test_validate_hdf5_rejects_corrupted_metadata(tmp_path, attribute):
    """Damage that h5py only notices when reading the root's or a member's attributes."""
    path = make_h5(tmp_path / "w.h5")
    data = bytearray(path.read_bytes())
    start = data.index(attribute) - 8
    data[start : start + 8 + len(attribute)] = b"\xff" * (8 + len(attribute))
    path.write_bytes(bytes(data))
    h5py.File(path, "r").close()  # the damage is not visible on open
    with pytest.raises(InvalidWeightsFile, match="unreadable"):
        validate_hdf5(path)


# --- local sources ---------------------------------------------------------


def test_local_path_and_file_url_return_the_file_itself(tmp_path):
    path = make_h5(tmp_path / "w.h5")
    digest = sha256_file(path)
    assert fetch(path) == path
    assert fetch(str(path), digest) == path
    assert fetch(path.as_uri(), digest) == path
    assert fetch(f"{path.as_uri()}#sha256={digest}") == path
    assert not cache_dir().exists()


def test_local_wrong_sha_raises_and_keeps_users_file(tmp_path):
    path = make_h5(tmp_path / "w.h5")
    data = path.read_bytes()
    with pytest.raises(ChecksumError) as info:
        fetch(path, "0" * 64)
    message = str(info.value)
    assert str(path) in message and "0" * 64 in message and sha(data) in message
    assert path.read_bytes() == data


def test_local_missing_file(tmp_path):
    path = tmp_path / "missing.h5"
    with pytest.raises(WeightsError, match="does not exist") as info:
        fetch(path)
    assert str(path) in str(info.value)


def test_local_half_truncated_file(tmp_path):
    path = make_h5(tmp_path / "w.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidWeightsFile):
        fetch(path)
    with pytest.raises(InvalidWeightsFile):
        fetch(path, sha(data[: len(data) // 2]))
    assert path.exists()


def test_invalid_sha_argument(tmp_path):
    with pytest.raises(ValueError, match="64 hex"):
        fetch(make_h5(tmp_path / "w.h5"), "abc")


# --- downloads -------------------------------------------------------------


def test_download_lands_in_cache_and_is_reused(server):
    digest = sha(server.good)
    path = fetch(server.url("good.h5"), digest, progress=False)
    assert path == cache_dir() / digest / "good.h5"
    assert path.read_bytes() == server.good
    assert cached_files() == [path]
    assert fetch(server.url("good.h5"), digest, progress=False) == path
    assert server.total == 1


def test_download_without_sha_uses_url_key(server):
    url = server.url("good.h5")
    path = fetch(url, progress=False)
    assert path == cache_dir() / sha(url.encode())[:16] / "good.h5"
    assert fetch(url, progress=False) == path
    assert server.total == 1


def test_download_with_explicit_filename(server):
    digest = sha(server.good)
    path = fetch(server.url("good.h5"), digest, progress=False, filename="resnet.h5")
    assert path == cache_dir() / digest / "resnet.h5"
    with pytest.raises(ValueError):
        fetch(server.url("good.h5"), digest, filename="../escape.h5")


def test_checksum_mismatch_is_not_cached_nor_retried(server):
    digest = sha(server.good)
    with pytest.raises(ChecksumError) as info:
        fetch(server.url("wrong.h5"), digest, progress=False)
    message = str(info.value)
    assert server.url("wrong.h5") in message and digest in message and sha(server.other) in message
    assert cached_files() == []
    assert server.counts["wrong.h5"] == 1


def test_truncated_body_is_retried_then_fails(server):
    with pytest.raises(DownloadError) as info:
        fetch(server.url("truncated.h5"), progress=False, retries=3)
    message = str(info.value)
    assert server.url("truncated.h5") in message and "3 attempt" in message
    assert server.counts["truncated.h5"] == 3
    assert cached_files() == []


@pytest.mark.parametrize("retries", [1, 4])
def test_http_500_fails_after_exactly_retries_attempts(server, retries):
    with pytest.raises(DownloadError) as info:
        fetch(server.url("error500.h5"), progress=False, retries=retries)
    message = str(info.value)
    assert server.url("error500.h5") in message
    assert f"{retries} attempt" in message and "HTTP 500 Internal Server Error" in message
    assert server.counts["error500.h5"] == retries
    assert cached_files() == []


def test_http_429_is_retried(server):
    with pytest.raises(DownloadError, match="HTTP 429"):
        fetch(server.url("busy.h5"), progress=False, retries=2)
    assert server.counts["busy.h5"] == 2


def test_backoff_is_exponential_and_not_after_last_attempt(server, monkeypatch):
    delays: list[float] = []
    monkeypatch.setattr(weights, "RETRY_BACKOFF", 0.5)
    monkeypatch.setattr(weights.time, "sleep", delays.append)
    with pytest.raises(DownloadError):
        fetch(server.url("error500.h5"), progress=False, retries=4)
    assert delays == [0.5, 1.0, 2.0]


def test_transient_500_then_success(server):
    digest = sha(server.good)
    path = fetch(server.url("flaky.h5"), digest, progress=False, retries=FLAKY_FAILURES + 1)
    assert path.read_bytes() == server.good
    assert server.counts["flaky.h5"] == FLAKY_FAILURES + 1


def test_404_is_not_retried(server):
    with pytest.raises(DownloadError) as info:
        fetch(server.url("missing.h5"), progress=False, retries=5)
    message = str(info.value)
    assert server.url("missing.h5") in message and "404" in message
    assert server.counts["missing.h5"] == 1
    assert cached_files() == []


def test_a_stalled_attempt_is_retried(server, monkeypatch):
    monkeypatch.setattr(weights, "STALL_TIMEOUT", SLOW_DELAY / 5)
    with pytest.raises(DownloadError, match="timed out") as info:
        fetch(server.url("slow.h5"), progress=False, retries=2)
    assert "2 attempt" in str(info.value)
    assert server.counts["slow.h5"] == 2
    assert cached_files() == []


def test_timeout_is_a_deadline_for_the_whole_fetch(server):
    """A server dripping a byte every 0.2 s never trips a per-read timeout."""
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(server.url("drip.h5"), progress=False, timeout=1.0)
    elapsed = time.monotonic() - start
    assert f"Could not download {server.url('drip.h5')} within timeout=1 s" in str(info.value)
    assert elapsed < 2.5
    assert server.counts["drip.h5"] == 1
    assert cached_files() == []


def test_timeout_must_be_positive(server):
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds, got 0"):
        fetch(server.url("good.h5"), timeout=0)
    assert server.total == 0


def test_downloaded_non_hdf5_is_rejected(server):
    with pytest.raises(InvalidWeightsFile, match="not an HDF5 file") as info:
        fetch(server.url("garbage.h5"), progress=False)
    assert server.url("garbage.h5") in str(info.value)
    assert server.counts["garbage.h5"] == 1
    assert cached_files() == []


def test_interrupted_download_leaves_no_file(server, monkeypatch):
    class InterruptingBar:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(weights, "tqdm", InterruptingBar)
    with pytest.raises(KeyboardInterrupt):
        fetch(server.url("good.h5"), progress=False)
    assert cached_files() == []


def test_a_killed_download_leaves_no_partial_file(server, tmp_path):
    go = tmp_path / "go"
    go.touch()
    url = server.url("stall.h5")
    child = start_fetch_process(url, go)
    key_dir = cache_dir() / sha(url.encode())[:16]
    wait_for(lambda: list(key_dir.glob("*.part")))  # the child is mid-download
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(list(key_dir.glob("*.part"))) == 1

    stale = cache_dir() / "otherkey" / "x.h5.0123.part"  # left by another killed download
    live = cache_dir() / "livekey" / "x.h5.4567.part"  # written by a download still running
    for part in (stale, live):
        part.parent.mkdir(parents=True)
        part.write_bytes(b"partial")
    (weights.zoo_home() / "locks").mkdir(exist_ok=True)
    with open(weights.zoo_home() / "locks" / "livekey.lock", "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = fetch(url, progress=False)

    assert path.read_bytes() == server.good
    assert [p for p in cached_files() if p.suffix == ".part"] == [live]


def test_processes_fetching_one_url_download_it_once(server, tmp_path):
    go = tmp_path / "go"
    url = server.url("pieces.h5")
    children = [start_fetch_process(url, go) for _ in range(3)]
    go.touch()
    paths = [child.communicate(timeout=60)[0].strip() for child in children]
    assert [child.returncode for child in children] == [0, 0, 0]
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == server.good
    assert server.counts["pieces.h5"] == 1


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_cached_files_follow_the_umask(server, umask, mode):
    previous = os.umask(umask)
    try:
        path = fetch(server.url("good.h5"), progress=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(path.with_name("good.h5.sha256").stat().st_mode) == mode


def test_progress_bar_goes_to_stderr_unless_disabled(server, capsys):
    fetch(server.url("good.h5"), progress=False)
    assert capsys.readouterr().err == ""
    fetch(server.url("good.h5") + "?again", progress=True)
    assert "good.h5" in capsys.readouterr().err


def test_url_sha256_fragment_is_honoured(server):
    digest = sha(server.good)
    path = fetch(server.url(f"good.h5#sha256={digest.upper()}"), progress=False)
    assert path == cache_dir() / digest / "good.h5"
    with pytest.raises(ChecksumError):
        fetch(server.url(f"wrong.h5#sha256={digest}"), progress=False)
    with pytest.raises(ValueError, match="Conflicting"):
        fetch(server.url(f"good.h5#sha256={digest}"), "1" * 64)
    with pytest.raises(ValueError, match="fragment"):
        fetch(server.url(f"good.h5#md5={digest[:32]}"))
    assert server.counts["good.h5"] == 1


# --- cache integrity and offline mode --------------------------------------


@pytest.mark.parametrize("with_sha", [True, False])
def test_corrupted_cache_is_deleted_and_redownloaded(server, with_sha):
    digest = sha(server.good) if with_sha else None
    path = fetch(server.url("good.h5"), digest, progress=False)
    path.write_bytes(b"garbage")
    assert fetch(server.url("good.h5"), digest, progress=False) == path
    assert path.read_bytes() == server.good
    assert server.counts["good.h5"] == 2


def test_cached_file_with_wrong_sha_is_redownloaded(server):
    digest = sha(server.good)
    path = fetch(server.url("good.h5"), digest, progress=False)
    path.write_bytes(server.other)  # valid HDF5, wrong content
    assert fetch(server.url("good.h5"), digest, progress=False) == path
    assert path.read_bytes() == server.good
    assert server.counts["good.h5"] == 2


def test_download_without_sha_is_reverified_on_each_use(server, monkeypatch):
    path = fetch(server.url("good.h5"), progress=False)
    record = path.with_name("good.h5.sha256")
    assert record.read_text() == f"{sha(server.good)}  good.h5\n"  # sha256sum -c reads it

    path.write_bytes(server.other)  # valid HDF5, tampered with
    assert fetch(server.url("good.h5"), progress=False) == path
    assert path.read_bytes() == server.good
    assert server.counts["good.h5"] == 2

    path.write_bytes(server.other)
    monkeypatch.setenv("ZOO_OFFLINE", "on")
    with pytest.raises(OfflineError):
        fetch(server.url("good.h5"), progress=False)
    assert not path.exists() and not record.exists()
    assert server.counts["good.h5"] == 2


def test_truncated_cache_is_detected_without_sha(server):
    path = fetch(server.url("good.h5"), progress=False)
    path.write_bytes(server.good[: len(server.good) // 2])
    assert fetch(server.url("good.h5"), progress=False) == path
    assert path.read_bytes() == server.good
    assert server.counts["good.h5"] == 2


def test_offline_uses_cache_without_requests(server, monkeypatch):
    digest = sha(server.good)
    path = fetch(server.url("good.h5"), digest, progress=False)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    assert fetch(server.url("good.h5"), digest, progress=False) == path
    assert server.total == 1


def test_offline_without_cache_raises_without_requests(server, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    digest = sha(server.good)
    with pytest.raises(OfflineError) as info:
        fetch(server.url("good.h5"), digest, progress=False)
    message = str(info.value)
    assert "ZOO_OFFLINE=1" in message and server.url("good.h5") in message
    assert str(cache_dir() / digest / "good.h5") in message
    assert server.total == 0


def test_offline_with_corrupted_cache_raises(server, monkeypatch):
    path = fetch(server.url("good.h5"), progress=False)
    path.write_bytes(b"garbage")
    monkeypatch.setenv("ZOO_OFFLINE", "true")
    with pytest.raises(OfflineError):
        fetch(server.url("good.h5"), progress=False)
    assert not path.exists()
    assert server.total == 1


# --- remove_if_cached ------------------------------------------------------


def test_remove_if_cached_only_deletes_inside_cache(server, tmp_path):
    path = fetch(server.url("good.h5"), progress=False)
    assert remove_if_cached(path) is True
    assert not path.exists() and not path.parent.exists()
    assert cache_dir().exists()
    assert remove_if_cached(path) is False

    own = make_h5(tmp_path / "own.h5")
    assert remove_if_cached(own) is False
    assert own.exists()
    sneaky = cache_dir() / ".." / ".." / "own.h5"
    assert remove_if_cached(sneaky) is False
    assert own.exists()
