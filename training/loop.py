"""The training loop every recipe runs: data from the data layer, the recipe's model
wrapper, optimizer and callbacks, and a report of what was measured."""

from __future__ import annotations

import dataclasses
import time

import zoo  # noqa: I001  (first: selects Keras 2)
from zoo.data import dataset_info
from training.recipe import Recipe, recipe_for


def train(model_name: str, dataset: str, *, recipe: Recipe | None = None, epochs=None, batch_size=None,
          method: str | None = None, data_dir=None, train_images=None, teacher=None, verbose=1, seed=0):
    """Trains ``model_name`` from scratch; returns (model, report).

    ``recipe`` defaults to the model's method's recipe (``method`` borrows another one's).
    """
    recipe = recipe or recipe_for(model_name, epochs, batch_size, method=method)
    info = dataset_info(dataset)
    shape = info["image_shape"] if None not in info["image_shape"] else None
    train_data = zoo.load_dataset(dataset, "train", batch_size=recipe.batch_size, take=train_images,
                                  data_dir=data_dir, seed=seed)
    test_data = zoo.load_dataset(dataset, info["eval_split"], batch_size=256, data_dir=data_dir)
    model = zoo.load(model_name, weights=None, input_shape=shape, classes=info["num_classes"])
    trainable = recipe.wrap(model, teacher)
    recipe.compile(trainable)
    start = time.perf_counter()
    history = trainable.fit(train_data, epochs=recipe.epochs, validation_data=test_data,
                            callbacks=recipe.callbacks(model_name), verbose=verbose)
    curves = {key: [float(v) for v in values] for key, values in history.history.items()}
    report = {
        "model": model_name,
        "dataset": dataset,
        "recipe": {"name": type(recipe).__name__, **dataclasses.asdict(recipe)},
        "train_images_per_epoch": train_images or info["splits"]["train"],
        "train_seconds": round(time.perf_counter() - start, 1),
        "best_val_accuracy": max(curves["val_accuracy"]),  # the reference protocol (methods.md §0.3)
        "final_val_accuracy": curves["val_accuracy"][-1],
        "history": curves,
    }
    return model, report
