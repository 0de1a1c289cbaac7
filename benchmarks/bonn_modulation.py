"""BONN's modulation vector ``w``: which initialisation keeps the binary weights moving.
Same budget, seed and data order for every row; only ``w``'s starting value, the optimizer,
and for the reference rows the kernel loss, differ.

    python benchmarks/bonn_modulation.py --epochs 1 --train-images 15000

Candidates for ``w``'s start (the spec leaves it open; the book draws it at random):
``inverse_mean`` (the zoo's choice) w = 1/mean|k|, which puts w∘k on the ±1 scale the
kernel loss pulls it to, the clipped STE window |w∘k| ≤ 1 then holding the weights with
|k| ≤ mean|k|; ``half_inverse_mean`` w = 1/(2·mean|k|) and ``inverse_max`` w = 1/max|k|,
windows holding (nearly) every weight; ``one`` w = 1 (the window holds every weight, the
reconstruction term pulls every |k| towards 1). References, not BONN: ``no_kernel_loss``
(w = 1/mean|k|, λ = 0: the same layer without the Bayesian kernel loss) and
``bnn_resnet20``. ``lambda=VALUE`` rows keep w = 1/mean|k| and set λ, the kernel loss's weight
(the book's 1e-4 is the zoo's default; any other value is a deviation, measured here):

    python benchmarks/bonn_modulation.py --epochs 3 --train-images 55000 --batch-size 128 \
        --optimizers sgd --rows lambda=1e-4,lambda=1e-5,lambda=1e-6,no_kernel_loss

Rows: accuracy on held-out training images (the last ``--held-out``,
disjoint from the training images) per epoch and after re-estimating the BatchNorm
statistics, and the share of binary weights whose sign changed in each epoch (in its first
and in its last 10 % of steps, where the freeze shows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from common import command_line, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from probes import RESULT_COLUMNS, fashion_mnist_splits, fit_and_probe, result_cells  # noqa: E402
from training.recipes import recipe_for  # noqa: E402
from zoo.schemes.bonn import bonn_layers  # noqa: E402

#: candidate → ``w``'s start from the layer's initial kernel ``k``
INITIALISATIONS = {
    "inverse_mean": lambda k: 1.0 / tf.reduce_mean(tf.abs(k)),
    "half_inverse_mean": lambda k: 0.5 / tf.reduce_mean(tf.abs(k)),
    "inverse_max": lambda k: 1.0 / tf.reduce_max(tf.abs(k)),
    "one": lambda k: tf.constant(1.0),
}
REFERENCES = ("no_kernel_loss", "bnn_resnet20")
LAMBDA_ROW = "lambda="


def parse_row(row: str) -> tuple[str, float | None]:
    """``(w's initialisation, λ)`` of a row; λ is None where the layer keeps its own. Raises
    ValueError for a row that is none of the candidates, references or ``lambda=VALUE``."""
    if row.startswith(LAMBDA_ROW):
        try:
            value = float(row[len(LAMBDA_ROW):])
        except ValueError:
            value = float("nan")
        if not 0 <= value < float("inf"):
            raise ValueError(f"{row!r}: λ must be a finite number, at least 0")
        return "inverse_mean", value
    if row == "no_kernel_loss":
        return "inverse_mean", 0.0
    if row in (*INITIALISATIONS, "bnn_resnet20"):
        return row, None
    raise ValueError(f"unknown row {row!r}; choose from {', '.join([*INITIALISATIONS, *REFERENCES])} "
                     f"or {LAMBDA_ROW}VALUE")


def label(row: str) -> str:
    if row in REFERENCES:
        return row
    if row.startswith(LAMBDA_ROW):
        return f"bonn_resnet20 (λ = {parse_row(row)[1]:g})"
    return f"bonn_resnet20 (w = {row})"


def run(row: str, optimizer: str, args, data, held_out, recalibration) -> dict:
    """One row: a ``w`` candidate or a λ (BONN), ``no_kernel_loss`` or ``bnn_resnet20``."""
    keras.utils.set_random_seed(0)
    name = "bnn_resnet20" if row == "bnn_resnet20" else "bonn_resnet20"
    model = zoo.load(name, weights=None, input_shape=(28, 28, 1), classes=10)
    initialisation, kernel_loss_weight = parse_row(row)
    for layer in bonn_layers(model):
        layer.w.assign(tf.fill(layer.w.shape, INITIALISATIONS[initialisation](layer.kernel)))
        if kernel_loss_weight is not None:
            layer.kernel_loss_weight = kernel_loss_weight
    overrides = ({"optimizer_name": "adam", "learning_rate": args.adam_learning_rate, "weight_decay": 0.0}
                 if optimizer == "adam" else {})
    recipe = recipe_for(name, args.epochs, args.batch_size, method="bonn", **overrides)
    trainable = recipe.wrap(model)
    recipe.compile(trainable)
    return fit_and_probe(model, trainable, data, held_out, recalibration, recipe.epochs,
                         -(-args.train_images // args.batch_size), recipe.callbacks(name))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=15_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=5_000, help="the last N training images, for evaluation")
    parser.add_argument("--optimizers", default="sgd,adam", help="sgd (the BONN recipe's SGD 0.1) and/or adam")
    parser.add_argument("--rows", default=",".join([*INITIALISATIONS, *REFERENCES]),
                        help=f"w candidates, references and {LAMBDA_ROW}VALUE rows, comma-separated (default: "
                             "the candidates and references)")
    parser.add_argument("--adam-learning-rate", type=float, default=2e-3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default=None, help="results file name")
    args = parse_arguments(parser, argv, lambda a: "bonn_modulation")
    for row in args.rows.split(","):
        try:
            parse_row(row)
        except ValueError as err:
            parser.error(f"--rows: {err}")
    data, held_out, recalibration = fashion_mnist_splits(parser, args)
    results, rows = {}, []
    for optimizer in args.optimizers.split(","):
        for row in args.rows.split(","):
            run_label = f"{label(row)}, {optimizer}"
            result = results[run_label] = run(row, optimizer, args, data, held_out, recalibration)
            rows.append([run_label, *result_cells(result)])
            print(rows[-1], flush=True)
    command = command_line(__file__, argv)
    table = markdown_table(rows, ["run", *RESULT_COLUMNS])
    table += (f"\n\nReal Fashion-MNIST: {args.epochs} epochs x the first {args.train_images} training images, "
              f"batch {args.batch_size}, seed 0; accuracy on the last {args.held_out} training images (held out). "
              f"sgd = the BONN recipe (SGD 0.9, lr 0.1, cosine, coupled decay 1e-4 on non-binary variables), "
              f"adam = Adam {args.adam_learning_rate}, cosine, no decay; BONN's losses in every bonn_resnet20 row "
              f"(λ = 1e-4 unless the row names another; no_kernel_loss: λ = 0).\n\n`{command}`")
    write_results(args.name, {"command": command, "results": results}, table)


if __name__ == "__main__":
    main()
