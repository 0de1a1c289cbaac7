"""What a run logs: TensorBoard, the history as CSV and JSON, a PNG of the curves.

The history is one row per finished epoch (``epoch`` counts from 1; the metrics Keras
logs — ``loss``, ``accuracy``, ``val_*``, ``lr`` and a method's own, e.g.
``rbnn_sign_flips`` — and the epoch's wall-clock ``seconds``). It is committed with each
checkpoint, so a resumed run continues it instead of starting over, and both files are
rewritten atomically from it after every epoch.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import tf_keras as keras
from zoo.files import atomic_write


HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"
TENSORBOARD = "tensorboard"


def tensorboard(output: Path) -> keras.callbacks.TensorBoard:
    """Epoch-level scalars under ``<output>/tensorboard`` (steps continue on resume)."""
    return keras.callbacks.TensorBoard(str(output / TENSORBOARD), write_graph=False, update_freq="epoch",
                                       profile_batch=0)


def write_history(output: Path, rows: list[dict]) -> None:
    atomic_write(output / HISTORY_JSON, json.dumps(rows, indent=1))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(output / HISTORY_CSV, text.getvalue())


def read_history(output: Path) -> list[dict]:
    path = output / HISTORY_JSON
    return json.loads(path.read_text()) if path.exists() else []


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """Loss, train/validation accuracy and learning rate per epoch, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # Agg directly: no pyplot, no GUI backend
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in rows]
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    panels = (("loss", ("loss", "val_loss")), ("accuracy", ("accuracy", "val_accuracy")), ("learning rate", ("lr",)))
    for axes, (label, keys) in zip(figure.subplots(1, 3), panels):
        for key in keys:
            if any(key in row for row in rows):
                axes.plot(epochs, [row.get(key, float("nan")) for row in rows], marker="o", markersize=3,
                          label={"loss": "train", "accuracy": "train", "lr": "lr"}.get(key, "validation"))
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        if len(keys) > 1:
            axes.legend()
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
