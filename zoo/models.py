"""keras.applications-style functions, one per registered model.

>>> from zoo import models
>>> model = models.bnn_resnet18(include_top=True, weights=None, input_shape=(224, 224, 3), classes=1000)

Each is ``zoo.load`` with the name filled in, so it follows the registry as it grows.
"""

from __future__ import annotations

from zoo import registry
from zoo.loading import load


def _model_function(name: str):
    spec = registry.get_model_spec(name)

    def build(include_top=True, weights="default", input_tensor=None, input_shape=None, pooling=None,
              classes=None, classifier_activation="softmax", **kwargs):
        return load(name, weights=weights, include_top=include_top, input_tensor=input_tensor,
                    input_shape=input_shape, pooling=pooling, classes=classes,
                    classifier_activation=classifier_activation, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"{spec.scheme.method} {spec.architecture.description} "
        f"({spec.scheme.paper}).\n\nArguments as keras.applications' builders and `zoo.load`."
    )
    return build


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return _model_function(name)
    except registry.UnknownModelError as err:
        raise AttributeError(str(err)) from None


def __dir__():
    return registry.list_models()
