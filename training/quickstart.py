"""The README's main job: a pretrained binary model to a verified phone file, offline.

Loads ``rbnn_resnet18`` with the weights this project trained on the real Fashion-MNIST
(shipped in ``pretrained/``) and evaluates it on the Fashion-MNIST test split. Then it
fine-tunes the whole model — every binary and float layer, under a new 10-class head — with
``model.fit`` on a different real dataset that ships offline (scikit-learn's handwritten
digits, 8×8 upsampled to 28×28), and beside it the same model from random initialisation
with the same budget, seed and settings, to show what the pretrained weights are worth.
It re-estimates the BatchNorm statistics after fine-tuning (``zoo.recalibrate_bn``),
converts the fine-tuned model with Larq Compute Engine, verifies the ``.tflite`` against
the Keras model in LCE's interpreter, and prints accuracy, file size and latency.

    python -m training.quickstart [--model rbnn_resnet18] [--epochs 8] [--quiet]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import zoo  # noqa: I001  (first: selects Keras 2)
import numpy as np
import tensorflow as tf
import tf_keras as keras
from zoo.errors import user_errors
from zoo.export import binary_weights
from zoo.text import text_table
from training.recipes import recipe_for

PRETRAINED_TAG = "fashion_mnist"
FASHION_MNIST_TEST_IMAGES = 10_000
SEED = 0  # both runs: the same new head, data order and (for the control) random body


@dataclasses.dataclass(frozen=True)
class FineTune:
    """The fine-tune's settings: the method's recipe and per-epoch machinery with Adam, a
    cosine decay to 0 and coupled weight decay. The learning rate and the decay were chosen
    on digits held out of the training split (``benchmarks/fine_tune_choice.py``)."""

    epochs: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 64

    def recipe(self, name: str):
        return recipe_for(name, self.epochs, self.batch_size, optimizer_name="adam",
                          learning_rate=self.learning_rate, weight_decay=self.weight_decay)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rbnn_resnet18", help="a model with fashion_mnist weights")
    parser.add_argument("--epochs", type=int, default=FineTune.epochs, help="fine-tuning epochs on the digits")
    parser.add_argument("--no-control", action="store_true",
                        help="skip the same fine-tune from random initialisation")
    parser.add_argument("--eval-images", type=int, default=0,
                        help="Fashion-MNIST test images to evaluate on (0: all 10 000)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    parser.add_argument("--output", default=None, help="where to write the .tflite (default: a temp dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    shipped = sorted(entry.name for entry in zoo.registry.manifest_entries() if entry.tag == PRETRAINED_TAG)
    if args.model not in shipped:
        parser.error(f"--model {args.model!r} has no {PRETRAINED_TAG} weights; choose one of {', '.join(shipped)}")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if not 0 <= args.eval_images <= FASHION_MNIST_TEST_IMAGES:
        parser.error(f"--eval-images must be between 0 (all) and {FASHION_MNIST_TEST_IMAGES}, got {args.eval_images}")
    if args.output is not None:
        try:
            Path(args.output).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"--output {args.output}: cannot make the directory ({err.strerror})")
    return args


def digits(image_size: int = 28, test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 1 797 handwritten digits as raw pixels: 8×8 (0–16) scaled to 0–255,
    upsampled to ``image_size``², split per class into train and test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = tf.image.resize(data.images[..., None] * (255.0 / 16.0), (image_size, image_size)).numpy()
    x_train, x_test, y_train, y_test = train_test_split(
        images.astype(np.float32), data.target, test_size=test_fraction, stratify=data.target, random_state=seed,
    )
    return (x_train, y_train), (x_test, y_test)


def with_new_head(name: str, classes: int, weights, input_shape) -> keras.Model:
    """The model (``weights``: the pretrained tag, or None for random initialisation) under a
    new ``classes``-way softmax head; every layer trainable."""
    keras.utils.set_random_seed(SEED)  # the same new head (and random body) in every run
    body = zoo.load(name, weights=weights, include_top=False, pooling="avg", input_shape=input_shape)
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(body.output)
    return keras.Model(body.input, outputs, name=f"{name}_digits")


def fine_tune(name: str, weights, train, test, settings: FineTune, verbose: int = 0) -> tuple[keras.Model, float, float]:
    """Fine-tunes the whole model on ``train`` (every binary and float layer, under a new
    head) with ``model.fit``; re-estimates its BatchNorm statistics on the training images;
    returns it with its accuracy on ``test`` and the share of its binary weights whose sign
    the fine-tune changed."""
    (x_train, y_train), (x_test, y_test) = train, test
    model = with_new_head(name, len(np.unique(y_train)), weights, x_train.shape[1:])
    recipe = settings.recipe(name)
    recipe.compile(model)
    before = binary_weights(model)
    data = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(len(x_train), seed=SEED)
    model.fit(data.batch(settings.batch_size), epochs=settings.epochs, callbacks=recipe.callbacks(name),
              verbose=verbose)
    zoo.recalibrate_bn(model, tf.data.Dataset.from_tensor_slices(x_train).batch(256), batches=8)
    _, accuracy = model.evaluate(x_test, y_test, verbose=verbose)
    return model, float(accuracy), float(np.mean(binary_weights(model) != before))


def main(argv=None) -> dict:
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    verbose = 0 if args.quiet else 1
    if args.quiet:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()

    entry = zoo.registry.pretrained_entry(args.model, PRETRAINED_TAG)
    say(f"{args.model} ({zoo.info(args.model)['method']}): weights {entry.file}, stated top-1 "
        f"{entry.metrics['top1']} % on {entry.metrics['test_images']} Fashion-MNIST test images")
    pretrained = zoo.load(args.model, weights=PRETRAINED_TAG)
    pretrained.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    fashion_test = zoo.load_dataset("fashion_mnist", "test", batch_size=256, data_dir=args.data_dir,
                                    take=args.eval_images or None)
    _, fashion_accuracy = pretrained.evaluate(fashion_test, verbose=verbose)

    train, test = digits(entry.input_shape[0])
    say(f"Fine-tuning the whole model on scikit-learn's digits: {len(train[0])} train / {len(test[0])} test "
        f"images, {args.epochs} epochs")
    settings = FineTune(epochs=args.epochs)
    model, digits_accuracy, changed = fine_tune(args.model, PRETRAINED_TAG, train, test, settings, verbose)
    control_accuracy = None
    if not args.no_control:
        say("The same fine-tune from random initialisation")
        _, control_accuracy, _ = fine_tune(args.model, None, train, test, settings, verbose)
    x_test = test[0]

    output_dir = Path(args.output or tempfile.mkdtemp(prefix="zoo-quickstart-"))
    conversion = zoo.convert(model, output_dir / f"{args.model}-digits.tflite", verify_data=x_test,
                             class_names=[str(digit) for digit in range(10)],
                             verify_samples=len(x_test), progress=None if args.quiet else say)
    latency = zoo.benchmark(conversion.path, threads=1).results[0]

    report = {
        "model": args.model,
        "fashion_mnist_test_accuracy": round(float(fashion_accuracy), 4),
        "fashion_mnist_test_images": args.eval_images or entry.metrics["test_images"],
        "digits_train_images": len(train[0]),
        "digits_test_images": len(x_test),
        "digits_test_accuracy": round(digits_accuracy, 4),
        "digits_test_accuracy_from_random_init": None if control_accuracy is None else round(control_accuracy, 4),
        "binary_weights_changed_by_fine_tune": round(changed, 6),
        "fine_tune": {**dataclasses.asdict(settings), "optimizer": "adam", "schedule": "cosine", "seed": SEED},
        "tflite": conversion.path,
        "tflite_bytes": conversion.file_bytes,
        "lce_ops": conversion.ops,
        "binary_layers": conversion.binary_layers,
        "lce_bconv2d": conversion.bconv2d,
        "lce_top1_agreement": conversion.parity.top1_agreement,
        "lce_max_abs_diff": conversion.parity.max_abs_diff,
        "lce_latency_ms_median": round(latency.median_ms, 3),
    }
    rows = [
        ["Fashion-MNIST test accuracy (pretrained)",
         f"{report['fashion_mnist_test_accuracy']:.2%} on {report['fashion_mnist_test_images']} images"],
        ["digits test accuracy, fine-tuned from the pretrained weights",
         f"{report['digits_test_accuracy']:.2%} on {len(x_test)} images ({args.epochs} epochs on {len(train[0])})"],
        ["binary weights whose sign the fine-tune changed", f"{changed:.2%}"],
        *([] if control_accuracy is None else [[
            "digits test accuracy, the same fine-tune from random initialisation",
            f"{control_accuracy:.2%} on {len(x_test)} images"]]),
        [".tflite", f"{conversion.path} ({conversion.file_bytes / 2**20:.2f} MiB)"],
        ["binary convs as LceBconv2d", f"{conversion.bconv2d} of {conversion.binary_layers}"],
        ["LCE interpreter vs Keras", f"{conversion.parity.top1_agreement:.2%} top-1 agreement, max |Δp| "
                                     f"{conversion.parity.max_abs_diff:.1e} on {conversion.parity.samples} digits"],
        ["LCE latency (x86, 1 thread)", f"{report['lce_latency_ms_median']} ms median"],
    ]
    print(text_table(rows, ["quickstart", args.model]))
    if not args.quiet:
        print(json.dumps(report))
    return report


if __name__ == "__main__":
    try:
        main()
    except user_errors() as err:
        sys.exit(f"quickstart: error: {err}")
