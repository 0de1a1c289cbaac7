"""Shared pytest fixtures."""

import os

import pytest
import zoo  # noqa: F401  (first: it selects Keras 2 before any test module imports larq)


def pytest_configure(config):
    """Under pytest-xdist each worker gets an equal share of the cores: TensorFlow's
    default thread pools per worker would oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import tensorflow as tf

        threads = max(1, (os.cpu_count() or 1) // workers)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def pytest_collection_finish(session):
    """Moves what the imports made (TensorFlow, Keras, the test modules: ~450 000 objects)
    out of the garbage collector's reach: it lives for the session anyway, and every full
    collection (one per test in ``freed_models``) would walk it again: 0.2-0.5 s a test."""
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def fashion_mnist_data_dir(tmp_path_factory):
    """A TFDS data dir with `zoo_fashion_mnist` built once from the real IDX files.

    Source: $ZOO_FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist
    (`apt-get install -y dataset-fashion-mnist`). Use it as
    `zoo.data.load_dataset("fashion_mnist", ..., data_dir=fashion_mnist_data_dir)`.
    """
    from zoo import data

    data_dir = tmp_path_factory.mktemp("tfds_data")
    builder = data.prepare_fashion_mnist(data_dir)  # ~15 s, once per session
    assert builder.is_prepared()
    return str(data_dir)


@pytest.fixture(autouse=True)
def freed_models():
    """Frees each test's models after it: Keras keeps the symbolic graph of every model
    built and its layer-name counters until the session is cleared, across all the tests
    a pytest-xdist worker runs.

    The larger leak is TensorFlow's: every graph-mode call of a ``tf.custom_gradient``
    function (larq's straight-through sign, once per binary conv each time a model is
    built or traced) registers a gradient function for good, and it holds the traced
    graph and so the layer's kernel: ~44 MB per ResNet-18 built, 9 GB per worker over the
    suite. The registrations a test made are dropped after it (models built by a
    module-scoped fixture were built before this fixture's snapshot, and keep theirs)."""
    from tensorflow.python.framework import ops

    gradients = ops.gradient_registry._registry
    registered_before = set(gradients)
    yield
    import gc

    import tf_keras as keras

    for name in set(gradients) - registered_before:
        if name.startswith("CustomGradient-"):
            del gradients[name]
    keras.backend.clear_session()
    gc.collect()
    _LIBC_MALLOC_TRIM(0)  # hand the freed heap back to the system: glibc keeps it otherwise


def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc
        return lambda pad: 0


_LIBC_MALLOC_TRIM = _malloc_trim()


@pytest.fixture(autouse=True)
def seeded():
    """Fixed seeds: a binary net amplifies a float-rounding sign flip of a near-zero
    pre-activation into a visibly different output, so parity checks use fixed weights."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)


def pytest_runtest_logreport(report):
    """With ``$ZOO_TEST_RSS_LOG`` set, appends each test's worker peak and current resident
    memory (MiB) to that file: how to find the tests that make a worker grow."""
    path = os.environ.get("ZOO_TEST_RSS_LOG")
    if not path or report.when != "teardown":
        return
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
    with open(path, "a") as log:
        log.write(f"{os.getpid()} {peak} {current} {report.nodeid}\n")
