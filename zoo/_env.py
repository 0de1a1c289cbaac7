"""Selects Keras 2 (tf_keras) before TensorFlow is imported: larq and TF-MOT need it.

This is the only place the package touches the Keras switch. It must run before the
first ``import tensorflow`` anywhere in the process, which ``zoo/__init__.py`` ensures by
importing this module first.
"""

import os
import sys
import warnings

_previous = os.environ.get("TF_USE_LEGACY_KERAS")
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if _previous not in (None, "1", "true", "True") and "tensorflow" in sys.modules:
    warnings.warn(
        f"TF_USE_LEGACY_KERAS was {_previous!r} and TensorFlow is already imported: "
        "zoo needs Keras 2 (tf_keras); import zoo before tensorflow.",
        stacklevel=3,
    )
