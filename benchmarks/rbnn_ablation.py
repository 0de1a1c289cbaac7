"""RBNN's parts, one at a time: which of them the gap to BNN at the shipped recipe comes from.
Same budget, seed, data order and recipe (the shipped one: Adam, cosine, no decay) for every
row; each row changes one thing of ``rbnn_resnet20``.

    python benchmarks/rbnn_ablation.py --epochs 3

Rows: ``rbnn`` (as the zoo trains it: θ = π/2, rotations fitted each epoch, the sign
schedule); ``rotation_off`` (R1 = R2 = I and never fitted, θ = π/2: w̃ = X, but its gradient
to X is (1 − |sin θ|)·g = 0 and θ's is 0, so every sign stays as initialised: what RBNN's
latent weights owe to the rotation); ``theta_zero`` (R1 = R2 = I, θ = 0: w̃ = X with the
whole gradient, so what is left is weight standardization, the training-aware sign, α and
the activation centring on a plain latent kernel); ``sign_schedule_off`` (t and k held at their epoch-0 values); ``theta_uniform`` (θ drawn
from U(0, π/2) per channel, as the authors' pre-release code did: a deviation, measured
here, not the default); and the reference ``bnn_resnet20``. Accuracy is on held-out
training images (the last ``--held-out``, disjoint from the training images) per epoch and
after re-estimating the BatchNorm statistics; flips are the share of binary weights whose
sign changed in each epoch (in its first and its last 10 % of steps).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from common import command_line, parse_arguments, write_results  # noqa: E402
from probes import RESULT_COLUMNS, fashion_mnist_splits, fit_and_probe, result_cells  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from training.recipes import recipe_for  # noqa: E402
from zoo.schemes.rbnn import RotationUpdate, SignSchedule, rbnn_layers  # noqa: E402

ROWS = ("rbnn", "rotation_off", "theta_zero", "sign_schedule_off", "theta_uniform", "bnn_resnet20")
#: the callback each row leaves out
LEFT_OUT = {"rotation_off": RotationUpdate, "theta_zero": RotationUpdate, "sign_schedule_off": SignSchedule}


def ablated(row: str) -> tuple[str, keras.Model]:
    """The row's model, changed as the row says, seeded as every other row."""
    keras.utils.set_random_seed(0)
    name = "bnn_resnet20" if row == "bnn_resnet20" else "rbnn_resnet20"
    model = zoo.load(name, weights=None, input_shape=(28, 28, 1), classes=10)
    for layer in rbnn_layers(model):
        if row in ("rotation_off", "theta_zero"):
            layer.r1.assign(tf.eye(layer.r1.shape[0]))
            layer.r2.assign(tf.eye(layer.r2.shape[0]))
        if row == "theta_zero":
            layer.theta.assign(tf.zeros_like(layer.theta))
        if row == "theta_uniform":
            layer.theta.assign(tf.random.uniform(layer.theta.shape, 0.0, math.pi / 2, seed=0))
    return name, model


def run(row: str, args, data, held_out, recalibration) -> dict:
    name, model = ablated(row)
    recipe = recipe_for(name, args.epochs, args.batch_size, optimizer_name="adam",
                        learning_rate=args.learning_rate, weight_decay=0.0)
    recipe.compile(model)
    callbacks = [callback for callback in recipe.callbacks(name)
                 if not isinstance(callback, LEFT_OUT.get(row, ()))]
    return fit_and_probe(model, model, data, held_out, recalibration, args.epochs,
                         -(-args.train_images // args.batch_size), callbacks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=55_000)
    parser.add_argument("--held-out", type=int, default=5_000, help="the last N training images, for evaluation")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="Adam's, decayed to 0 by a cosine")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated (default: all)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default=None, help="results file name")
    args = parse_arguments(parser, argv, lambda a: "rbnn_ablation")
    rows = args.rows.split(",")
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    data, held_out, recalibration = fashion_mnist_splits(parser, args)
    results, table_rows = {}, []
    for row in rows:
        result = results[row] = run(row, args, data, held_out, recalibration)
        table_rows.append([row, *result_cells(result)])
        print(table_rows[-1], flush=True)
    command = command_line(__file__, argv)
    table = markdown_table(table_rows, ["row", *RESULT_COLUMNS])
    table += (f"\n\nReal Fashion-MNIST: {args.epochs} epochs x the first {args.train_images} training images, "
              f"batch {args.batch_size}, seed 0, Adam {args.learning_rate:g} with a cosine decay to 0, no weight "
              f"decay; accuracy on the last {args.held_out} training images (held out).\n\n`{command}`")
    write_results(args.name, {"command": command, "results": results}, table)


if __name__ == "__main__":
    main()
