"""The process environment zoo needs: Keras 2 (tf_keras), a quiet start-up, its log line.

``zoo/__init__.py`` imports this module first, so it runs before zoo's first
``import tensorflow``:

* Keras 2. larq and TF-MOT need ``tf.keras`` to be tf_keras, which TensorFlow routes by
  ``TF_USE_LEGACY_KERAS``. When TensorFlow was imported before zoo (``import tensorflow``
  or ``import keras`` first) but nothing has resolved ``tf.keras`` yet, the routing is
  completed here; when ``tf.keras`` already is Keras 3, ``import zoo`` stops at once.
* Start-up noise. TensorFlow's native libraries log before absl's logging is initialised,
  ignoring ``TF_CPP_MIN_LOG_LEVEL`` (default here: 2, errors only), and a CPU-only machine
  gets an ``E0000 ... failed call to cuInit`` for its missing CUDA driver. TensorFlow is
  imported and its devices are listed here with those lines filtered by that level.
* The ``zoo`` logger says at INFO which weights ``zoo.load`` loaded: shown as ``zoo: ...``
  on stderr unless the application configured logging itself (then its handlers decide);
  ``logging.getLogger("zoo").setLevel(logging.WARNING)`` silences it.
"""

import contextlib
import ctypes.util
import functools
import importlib.util
import logging
import os
import re
import sys
import tempfile

KERAS_3_ALREADY_BOUND = (
    "zoo needs Keras 2 (tf_keras), but tf.keras is already Keras 3 in this process: set "
    "TF_USE_LEGACY_KERAS=1 before importing tensorflow (or keras), or import zoo first."
)

#: one line of TensorFlow's native (absl) log: severity letter, date, time, thread, file:line]
_NATIVE_RECORD = re.compile(r"([IWEF])\d{4} [\d:.]+ +\d+ \S+:\d+\] ")
_NATIVE_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_CUINIT_FAILURE = "failed call to cuInit"


def _min_native_log_level() -> int:
    try:
        return int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        return 0


def kept_native_log(text: str, min_level: int, cuda_driver_installed: bool) -> str:
    """``text`` (what native code wrote to stderr) without the log lines below
    ``min_level``, nor the cuInit failure when no CUDA driver is installed."""
    kept = []
    for line in text.splitlines(keepends=True):
        record = _NATIVE_RECORD.match(line)
        if line.rstrip("\r\n") == _ABSL_PREAMBLE:
            if min_level >= _NATIVE_SEVERITY["W"]:
                continue
        elif record and _NATIVE_SEVERITY[record.group(1)] < min_level:
            continue
        elif record and _CUINIT_FAILURE in line and not cuda_driver_installed:
            continue
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _native_log_filtered():
    """Captures what is written to file descriptor 2 inside the block, then writes back
    what :func:`kept_native_log` keeps."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = kept_native_log(
                captured.read().decode(errors="replace"),
                _min_native_log_level(),
                cuda_driver_installed=ctypes.util.find_library("cuda") is not None,
            )
            if kept:
                os.write(2, kept.encode())


def _keras_3_bound(tf) -> bool:
    """Whether this process already resolved ``tf.keras`` (the attribute or a
    ``tensorflow.keras`` import) to something other than tf_keras."""
    from tensorflow.python.util.lazy_loader import KerasLazyLoader

    tf_keras_dir = os.path.dirname(importlib.util.find_spec("tf_keras").origin)
    resolved = [m for n, m in sys.modules.items() if n == "tensorflow.keras" or n.startswith("tensorflow.keras.")]
    attribute = vars(tf).get("keras")
    if isinstance(attribute, KerasLazyLoader):
        if attribute._tfll_initialized and attribute._tfll_keras_version != "tf_keras":
            return True
    elif attribute is not None:
        resolved.append(attribute)
    return any(
        not os.path.realpath(getattr(m, "__file__", None) or "").startswith(os.path.realpath(tf_keras_dir))
        for m in resolved
    )


def _route_imported_tensorflow_to_tf_keras(tf) -> None:
    """Completes what ``TF_USE_LEGACY_KERAS=1`` does at ``import tensorflow``: its lazy
    ``tf.keras`` reads the variable when first used, but ``import tensorflow.keras...``
    (larq's way) follows ``tensorflow.__path__``, set at import."""
    if _keras_3_bound(tf):
        raise ImportError(KERAS_3_ALREADY_BOUND)
    from tensorflow.python.tools.module_util import get_parent_dir_for_name

    tf_keras_api = get_parent_dir_for_name("tf_keras.api._v2.keras")
    keras_3_api = get_parent_dir_for_name("keras.api._v2.keras") if importlib.util.find_spec("keras") else None
    tf.__path__[:] = [tf_keras_api] + [p for p in tf.__path__ if p not in (tf_keras_api, keras_3_api)]


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which may be replaced after import), and only
    while the application has not configured logging (then the record propagates there)."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr

    def filter(self, record):
        return not logging.getLogger().handlers and super().filter(record)


@contextlib.contextmanager
def root_logging_untouched():
    """Runs a block in which absl (through TFDS) may log: absl, like the ``logging.info``
    family, calls ``logging.basicConfig()`` when the root logger has no handler, which would
    configure the application's logging behind its back (and print zoo's own lines as
    ``INFO:zoo:``). A NullHandler holds the root's place meanwhile; a root logger the
    application configured is left alone."""
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeHandler(placeholder)


def root_logging_untouched_by(function):
    """``function`` run inside :func:`root_logging_untouched`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with root_logging_untouched():
            return function(*args, **kwargs)

    return wrapper


def _configure_zoo_logger() -> None:
    log = logging.getLogger("zoo")
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("zoo: %(message)s"))
        log.addHandler(handler)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_tensorflow_imported_before = "tensorflow" in sys.modules
os.environ["TF_USE_LEGACY_KERAS"] = "1"
with _native_log_filtered():
    import tensorflow

    if _tensorflow_imported_before:
        _route_imported_tensorflow_to_tf_keras(tensorflow)
    tensorflow.config.list_physical_devices("GPU")  # initialises CUDA: its log lines are filtered too
_configure_zoo_logger()
