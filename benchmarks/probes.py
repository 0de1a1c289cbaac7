"""Callbacks the training benchmarks share: what a run does to its binary weights, epoch by epoch."""

from __future__ import annotations

import numpy as np
import tf_keras as keras

from training.loop import accuracy
from zoo.export import binary_weights


class EpochProbe(keras.callbacks.Callback):
    """Held-out accuracy at the end of each epoch, and the share of binary weights whose
    sign changed over the epoch, over its first 10 % of steps and over its last 10 %."""

    def __init__(self, student, held_out, steps: int):
        super().__init__()
        self.student, self.held_out = student, held_out
        self.window = max(steps // 10, 1)
        self.marks = {self.window - 1: "first_tenth_end", steps - self.window - 1: "last_tenth_start"}
        self.rows = []

    def on_epoch_begin(self, epoch, logs=None):
        self.snapshots = {"epoch_start": binary_weights(self.student)}

    def on_train_batch_end(self, batch, logs=None):
        if batch in self.marks:
            self.snapshots[self.marks[batch]] = binary_weights(self.student)

    def on_epoch_end(self, epoch, logs=None):
        current, snapshot = binary_weights(self.student), self.snapshots
        self.rows.append({
            "epoch": epoch + 1, "held_out_accuracy": accuracy(self.student, self.held_out),
            "flipped": float(np.mean(current != snapshot["epoch_start"])),
            "flipped_first_tenth": float(np.mean(snapshot["first_tenth_end"] != snapshot["epoch_start"])),
            "flipped_last_tenth": float(np.mean(current != snapshot.get("last_tenth_start", current))),
        })
