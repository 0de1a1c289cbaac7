"""How much the binary kernels move while training: the share of ±1 weights (what
``zoo.to_inference`` would export) that differ from the initial ones, and from those of
the previous probe, every few steps of one epoch on real Fashion-MNIST.

    python benchmarks/sign_flips.py bonn_resnet20 bnn_resnet20 --recipe bonn --train-images 15000

A method whose binary weights stop flipping early has stopped searching the binary
space, whatever its latent weights do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402
from common import command_line, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from training.recipes import recipe_for  # noqa: E402
from zoo.export import binary_weights  # noqa: E402


class FlipProbe(keras.callbacks.Callback):
    def __init__(self, student, every):
        super().__init__()
        self.student, self.every = student, every
        self.initial = self.previous = binary_weights(student)
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every:
            return
        current = binary_weights(self.student)
        self.rows.append({"step": batch + 1, "flipped_since_start": float(np.mean(current != self.initial)),
                          "flipped_since_last_probe": float(np.mean(current != self.previous)),
                          **{k: float(v) for k, v in (logs or {}).items()}})
        self.previous = current


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--recipe", required=True, help="the method whose recipe every model trains with")
    parser.add_argument("--train-images", type=int, default=15_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--every", type=int, default=40, help="probe every N steps")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default=None, help="default: the recipe's")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--weight-decay", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default=None, help="results file name")
    args = parse_arguments(parser, argv, lambda a: "sign_flips_" + "_vs_".join(a.models))

    overrides = {field: value for field, value in (("optimizer_name", args.optimizer),
                 ("learning_rate", args.learning_rate), ("weight_decay", args.weight_decay)) if value is not None}
    probes = {}
    for name in args.models:
        keras.utils.set_random_seed(0)
        recipe = recipe_for(name, epochs=1, batch_size=args.batch_size, method=args.recipe, **overrides)
        data = zoo.load_dataset("fashion_mnist", "train", batch_size=args.batch_size, take=args.train_images,
                                data_dir=args.data_dir, seed=0)
        model = zoo.load(name, weights=None, input_shape=(28, 28, 1), classes=10)
        trainable = recipe.wrap(model)
        recipe.compile(trainable)
        probe = FlipProbe(model, args.every)
        trainable.fit(data, epochs=1, callbacks=[probe, *recipe.callbacks(name)], verbose=0)
        probes[name] = probe.rows

    steps = [row["step"] for row in probes[args.models[0]]]
    rows = [[step, *[f"{probes[m][i]['flipped_since_start']:.2%} / {probes[m][i]['flipped_since_last_probe']:.2%}"
                     for m in args.models]] for i, step in enumerate(steps)]
    command = command_line(__file__, argv)
    table = markdown_table(rows, ["step", *[f"{m}: flipped since start / since last probe" for m in args.models]])
    table += (f"\n\nShare of binary weights whose sign differs; real Fashion-MNIST, one epoch of "
              f"{args.train_images} images, batch {args.batch_size}, the {args.recipe} recipe"
              f"{' with ' + ', '.join(f'{k} {v}' for k, v in overrides.items()) if overrides else ''}.\n\n`{command}`")
    write_results(args.name, {"command": command, "probes": probes}, table)


if __name__ == "__main__":
    main()
