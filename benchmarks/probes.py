"""What the training benchmarks share: their Fashion-MNIST splits, and a probe of held-out
accuracy and of the binary weights' sign flips, epoch by epoch."""

from __future__ import annotations

import argparse

import numpy as np
import tf_keras as keras

import zoo
from training.loop import accuracy
from zoo.export import binary_weights


class EpochProbe(keras.callbacks.Callback):
    """Held-out accuracy at the end of each epoch, and the share of binary weights whose
    sign changed over the epoch, over its first 10 % of steps and over its last 10 %."""

    def __init__(self, student, held_out, steps: int):
        super().__init__()
        self.student, self.held_out = student, held_out
        self.window = max(steps // 10, 1)
        self.marks = {"first_tenth_end": self.window - 1, "last_tenth_start": steps - self.window - 1}
        self.rows = []

    def on_epoch_begin(self, epoch, logs=None):
        self.snapshots = {"epoch_start": binary_weights(self.student)}

    def on_train_batch_end(self, batch, logs=None):
        for mark, step in self.marks.items():  # in a run of few steps both marks may be one step
            if batch == step:
                self.snapshots[mark] = binary_weights(self.student)

    def on_epoch_end(self, epoch, logs=None):
        current, snapshot = binary_weights(self.student), self.snapshots
        self.rows.append({
            "epoch": epoch + 1, "held_out_accuracy": accuracy(self.student, self.held_out),
            "flipped": float(np.mean(current != snapshot["epoch_start"])),
            "flipped_first_tenth": float(np.mean(snapshot["first_tenth_end"] != snapshot["epoch_start"])),
            "flipped_last_tenth": float(np.mean(current != snapshot.get("last_tenth_start", current))),
        })


#: the columns :func:`result_cells` fills, after a row's name
RESULT_COLUMNS = ["held-out top-1 per epoch", "after BN re-estimation",
                  "signs flipped per epoch (first 10 %, last 10 % of its steps)"]


def result_cells(result: dict) -> list[str]:
    """A run's row of the table: :class:`EpochProbe`'s rows and the re-estimated accuracy."""
    epochs = result["epochs"]
    return [" / ".join(f"{epoch['held_out_accuracy']:.2%}" for epoch in epochs),
            f"{result['recalibrated_held_out_accuracy']:.2%}",
            " / ".join(f"{epoch['flipped']:.2%} ({epoch['flipped_first_tenth']:.2%}, {epoch['flipped_last_tenth']:.2%})"
                       for epoch in epochs)]


def fashion_mnist_splits(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """``(train, held_out, recalibration)``: the first ``args.train_images`` training images
    (shuffled, seed 0, batch ``args.batch_size``), the last ``args.held_out`` (in order), and
    the first again in order, for the BatchNorm re-estimation. A held-out part that would
    overlap the training images is refused."""
    train_size = zoo.data.dataset_info("fashion_mnist")["splits"]["train"]
    if not 0 < args.held_out <= train_size - args.train_images:
        parser.error(f"--held-out must leave the first --train-images {args.train_images} of the {train_size} "
                     "training images out of it")
    train = zoo.load_dataset("fashion_mnist", "train", batch_size=args.batch_size, take=args.train_images,
                             data_dir=args.data_dir, seed=0)
    held_out = zoo.load_dataset("fashion_mnist", f"train[{train_size - args.held_out}:]", batch_size=256,
                                training=False, data_dir=args.data_dir)
    recalibration = zoo.load_dataset("fashion_mnist", "train", batch_size=256, training=False,
                                     take=args.train_images, data_dir=args.data_dir)
    return train, held_out, recalibration


def fit_and_probe(student: keras.Model, trainable: keras.Model, data, held_out, recalibration, epochs: int,
                  steps: int, callbacks: list) -> dict:
    """Fits ``trainable`` (the student or the wrapper that trains it) with an :class:`EpochProbe`
    on the student, re-estimates the student's BatchNorm statistics on ``recalibration`` and
    returns the probe's rows and the held-out accuracy after the re-estimation."""
    probe = EpochProbe(student, held_out, steps)
    trainable.fit(data, epochs=epochs, callbacks=[probe, *callbacks], verbose=0)
    zoo.recalibrate_bn(student, recalibration, batches=50)
    return {"epochs": probe.rows, "recalibrated_held_out_accuracy": accuracy(student, held_out)}
