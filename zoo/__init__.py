"""zoo: 1-bit convolutional networks (RBNN, BONN, RBCN, CBCN and baselines) as Keras models.

>>> import zoo
>>> zoo.list_models("bnn_*")
>>> model = zoo.load("bnn_resnet20", weights=None, input_shape=(28, 28, 1), classes=10)
>>> inference_model = zoo.to_inference(model)
"""

from zoo import _env  # noqa: F401  (must precede every TensorFlow import)
from zoo import models, optimizers
from zoo.deploy import benchmark, convert
from zoo.export import to_inference
from zoo.loading import load
from zoo.profile import info, summary
from zoo.recalibration import recalibrate_bn
from zoo.registry import (
    callbacks, list_models, pretrained_entries, register_architecture, register_scheme, register_searched,
)

__version__ = "0.1.0"


def __getattr__(name):
    # tensorflow_datasets is heavy to import: only ``zoo.load_dataset`` pulls it in.
    if name == "load_dataset":
        from zoo.data import load_dataset

        return load_dataset
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")

__all__ = [
    "benchmark",
    "callbacks",
    "convert",
    "info",
    "list_models",
    "load",
    "load_dataset",
    "models",
    "optimizers",
    "recalibrate_bn",
    "pretrained_entries",
    "register_architecture",
    "register_scheme",
    "register_searched",
    "summary",
    "to_inference",
]
