"""Training recipes and entry points. Imports ``zoo``; ``zoo`` never imports this package.

``training.train(model_name, dataset, ...)`` is ``zoo train`` as a function
(:func:`training.loop.train`).
"""


def __getattr__(name):
    # Lazily: ``import training.recipes`` should not pull in the whole loop.
    if name == "train":
        from training.loop import train

        return train
    raise AttributeError(f"module 'training' has no attribute {name!r}")
