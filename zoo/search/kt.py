"""Keras Tuner, imported so that it drives tf_keras (Keras 2) models: the one place that does it.

Keras Tuner 1.4.8 picks its Keras when first imported: it does ``import keras``, finds
Keras 3 (which TensorFlow 2.21 installs) and then rejects every tf_keras model
(``FatalTypeError: Expected the model-building function ... to return a valid Keras
Model``; keras-team/keras-tuner#1039, fix #1040 unmerged). Patching its ``keras`` module
afterwards is not enough. Importing it while ``sys.modules["keras"]`` is ``tf_keras``
makes it take its TensorFlow (Keras 2) path, where it uses ``tf.keras`` — tf_keras, as
``zoo`` sets ``TF_USE_LEGACY_KERAS=1`` — throughout; the previous ``keras`` entry is put
back right after. In that mode it imports ``tensorboard`` (a dependency of the zoo).

Import Keras Tuner through this module (``from zoo.search.kt import keras_tuner``), and
before anything else imports ``keras_tuner``.
"""

from __future__ import annotations

import sys

import tf_keras


def _import_keras_tuner():
    if "keras_tuner" in sys.modules:
        module = sys.modules["keras_tuner"]
        from keras_tuner.src.backend import config

        if config.multi_backend():
            raise ImportError(
                "keras_tuner was imported before zoo.search and runs on Keras 3, so it rejects "
                "the zoo's tf_keras models: import zoo.search before keras_tuner."
            )
        return module
    previous = sys.modules.get("keras")
    sys.modules["keras"] = tf_keras
    try:
        import keras_tuner
    finally:
        if previous is None:
            del sys.modules["keras"]
        else:
            sys.modules["keras"] = previous
    return keras_tuner


keras_tuner = _import_keras_tuner()
