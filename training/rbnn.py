"""The RBNN training recipe (methods.md §1.8), on any TFDS dataset of the data layer.

Paper settings by default: SGD momentum 0.9, learning rate 0.1, weight decay 1e-4 on
**every** parameter (coupled, PyTorch-style), cross-entropy; CIFAR-style models train
1000 epochs at batch 256 with a 5-epoch linear warm-up then cosine annealing to 0
(stepped per epoch), ImageNet-style models 150 epochs at batch 512 with plain cosine.
The rotation update and the sign-approximation schedule run as callbacks.

Scale a run down with ``epochs``: the schedules (warm-up, cosine, t/k) are functions of
the epoch fraction, so a 10-epoch run covers the whole schedule; the warm-up is dropped
below 10 epochs.

    python -m training.rbnn --model rbnn_resnet20 --dataset fashion_mnist --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import zoo  # noqa: I001  (first: selects Keras 2)
import tf_keras as keras
from zoo import registry
from zoo.data import dataset_info
from zoo.optimizers import SGDCoupledDecay


@dataclasses.dataclass(frozen=True)
class RBNNRecipe:
    epochs: int
    batch_size: int
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 5

    @classmethod
    def for_model(cls, name: str, epochs: int | None = None, batch_size: int | None = None):
        """Paper settings for the model's family, optionally scaled to ``epochs``."""
        imagenet = registry.get_model_spec(name).architecture.family.endswith("(ImageNet-style)")
        default_epochs, default_batch, warmup = (150, 512, 0) if imagenet else (1000, 256, 5)
        epochs = epochs or default_epochs
        return cls(epochs=epochs, batch_size=batch_size or default_batch,
                   warmup_epochs=warmup if epochs >= 10 else 0)

    def learning_rate_at(self, epoch: int) -> float:
        """Linear warm-up ``lr·(e+1)/W`` for ``e < W``, then cosine to 0 over ``E − W + 1`` (§1.8)."""
        if epoch < self.warmup_epochs:
            return self.learning_rate * (epoch + 1) / self.warmup_epochs
        start = max(self.warmup_epochs - 1, 0)
        progress = (epoch - start) / (self.epochs - start)
        return 0.5 * self.learning_rate * (1.0 + math.cos(math.pi * progress))

    def optimizer(self) -> SGDCoupledDecay:
        return SGDCoupledDecay(self.learning_rate, self.momentum, self.weight_decay)

    def callbacks(self, model_name: str) -> list[keras.callbacks.Callback]:
        return [*zoo.callbacks(model_name, self.epochs), keras.callbacks.LearningRateScheduler(self.learning_rate_at)]


def train(model_name: str, dataset: str, *, epochs=None, batch_size=None, data_dir=None,
          train_images=None, verbose=1, seed=0):
    """Trains ``model_name`` from scratch with the recipe; returns (model, report)."""
    recipe = RBNNRecipe.for_model(model_name, epochs, batch_size)
    info = dataset_info(dataset)
    shape = info["image_shape"] if None not in info["image_shape"] else None
    train_data = zoo.load_dataset(dataset, "train", batch_size=recipe.batch_size, take=train_images,
                                  data_dir=data_dir, seed=seed)
    test_data = zoo.load_dataset(dataset, info["eval_split"], batch_size=256, data_dir=data_dir)
    model = zoo.load(model_name, weights=None, input_shape=shape, classes=info["num_classes"])
    model.compile(recipe.optimizer(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(train_data, epochs=recipe.epochs, validation_data=test_data,
                        callbacks=recipe.callbacks(model_name), verbose=verbose)
    curves = {key: [float(v) for v in values] for key, values in history.history.items()}
    report = {
        "model": model_name,
        "dataset": dataset,
        "recipe": dataclasses.asdict(recipe),
        "train_images_per_epoch": train_images or info["splits"]["train"],
        "train_seconds": round(time.perf_counter() - start, 1),
        "best_val_accuracy": max(curves["val_accuracy"]),  # the reference protocol (§0.3)
        "final_val_accuracy": curves["val_accuracy"][-1],
        "history": curves,
    }
    return model, report


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a model with the RBNN recipe.")
    parser.add_argument("--model", default="rbnn_resnet20")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--epochs", type=int, default=None, help="default: the paper's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the paper's")
    parser.add_argument("--train-images", type=int, default=None, help="limit the train split")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    _, report = train(args.model, args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                      data_dir=args.data_dir, train_images=args.train_images, verbose=0 if args.quiet else 1)
    print(json.dumps({k: v for k, v in report.items() if k != "history"}))
    return report


if __name__ == "__main__":
    main()
