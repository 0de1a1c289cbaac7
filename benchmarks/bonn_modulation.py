"""BONN's modulation vector ``w``: which initialisation trains. Same budget, same seed,
same data order for every row; only ``w``'s starting value (and the optimizer) differ.

    python benchmarks/bonn_modulation.py --epochs 3 --train-images 15000

``inverse_mean`` is the zoo's choice, w = 1/mean|k| (w∘k on the scale of ±1 that the
kernel loss pulls it to; the task gradient on k is multiplied by w, 10-21 here, and only
weights with |k| ≤ mean|k| get any); ``one`` is w = 1 (the clipped STE window |w∘k| ≤ 1
covers every latent weight and the task gradient reaches k unscaled, but the kernel loss's
reconstruction term then pulls every |k| towards 1). ``bnn_resnet20`` trains beside them as the baseline. Rows:
test accuracy per epoch (after the run, also with re-estimated BatchNorm statistics) and
the share of binary weights whose sign changed during each epoch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from common import command_line, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from sign_flips import binary_kernels  # noqa: E402
from training.loop import accuracy  # noqa: E402
from training.recipes import recipe_for  # noqa: E402
from zoo.schemes.bonn import bonn_layers  # noqa: E402

INITIALISATIONS = ("one", "inverse_mean")


class EpochProbe(keras.callbacks.Callback):
    """Test accuracy and the share of flipped binary weights at the end of each epoch."""

    def __init__(self, student, test_data):
        super().__init__()
        self.student, self.test_data = student, test_data
        self.previous = binary_kernels(student)
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        current = binary_kernels(self.student)
        self.rows.append({"epoch": epoch + 1, "test_accuracy": accuracy(self.student, self.test_data),
                          "flipped": float(np.mean(current != self.previous))})
        self.previous = current


def run(name: str, initialisation: str | None, optimizer: str, args, data, test_data, recalibration) -> dict:
    keras.utils.set_random_seed(0)
    model = zoo.load(name, weights=None, input_shape=(28, 28, 1), classes=10)
    for layer in bonn_layers(model):
        value = 1.0 if initialisation == "one" else 1.0 / tf.reduce_mean(tf.abs(layer.kernel))
        layer.w.assign(tf.fill(layer.w.shape, value))
    overrides = ({"optimizer_name": "adam", "learning_rate": args.adam_learning_rate, "weight_decay": 0.0}
                 if optimizer == "adam" else {})
    recipe = recipe_for(name, args.epochs, args.batch_size, method="bonn", **overrides)
    trainable = recipe.wrap(model)
    recipe.compile(trainable)
    probe = EpochProbe(model, test_data)
    trainable.fit(data, epochs=recipe.epochs, callbacks=[probe, *recipe.callbacks(name)], verbose=0)
    zoo.recalibrate_bn(model, recalibration, batches=50)
    return {"epochs": probe.rows, "recalibrated_test_accuracy": accuracy(model, test_data)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=15_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizers", default="sgd,adam", help="sgd (the BONN recipe's SGD 0.1) and/or adam")
    parser.add_argument("--adam-learning-rate", type=float, default=2e-3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default=None, help="results file name")
    args = parse_arguments(parser, argv, lambda a: "bonn_modulation")

    data = zoo.load_dataset("fashion_mnist", "train", batch_size=args.batch_size, take=args.train_images,
                            data_dir=args.data_dir, seed=0)
    test_data = zoo.load_dataset("fashion_mnist", "test", batch_size=256, data_dir=args.data_dir)
    recalibration = zoo.load_dataset("fashion_mnist", "train", batch_size=256, training=False,
                                     take=args.train_images, data_dir=args.data_dir)
    results, rows = {}, []
    for optimizer in args.optimizers.split(","):
        for name, initialisation in [*(("bonn_resnet20", i) for i in INITIALISATIONS), ("bnn_resnet20", None)]:
            label = f"{name}" + (f" (w = {initialisation})" if initialisation else "") + f", {optimizer}"
            result = results[label] = run(name, initialisation, optimizer, args, data, test_data, recalibration)
            rows.append([label, " / ".join(f"{row['test_accuracy']:.2%}" for row in result["epochs"]),
                         f"{result['recalibrated_test_accuracy']:.2%}",
                         " / ".join(f"{row['flipped']:.2%}" for row in result["epochs"])])
            print(rows[-1], flush=True)
    command = command_line(__file__, argv)
    table = markdown_table(rows, ["run", "test top-1 per epoch", "after BN re-estimation",
                                  "signs flipped per epoch"])
    table += (f"\n\nReal Fashion-MNIST (all 10 000 test images), {args.epochs} epochs x {args.train_images} "
              f"training images, batch {args.batch_size}, seed 0; sgd = the BONN recipe (SGD 0.9, lr 0.1, cosine, "
              f"coupled decay 1e-4 on non-binary variables), adam = Adam {args.adam_learning_rate}, cosine, no "
              f"decay; BONN's losses in both.\n\n`{command}`")
    write_results(args.name, {"command": command, "results": results}, table)


if __name__ == "__main__":
    main()
