"""The README's main job: a pretrained binary model to a verified phone file, offline.

Loads ``rbnn_resnet18`` with the weights this project trained on the real Fashion-MNIST
(shipped in ``pretrained/``), evaluates it on the Fashion-MNIST test split, fine-tunes a
new classification head on a different real dataset that ships offline (scikit-learn's
handwritten digits, 8×8 upsampled to 28×28) with ``model.fit``, converts the fine-tuned
model with Larq Compute Engine, verifies the ``.tflite`` against the Keras model in
LCE's interpreter, and prints accuracy, file size and latency.

    python -m training.quickstart [--model rbnn_resnet18] [--epochs 5] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import zoo  # noqa: I001  (first: selects Keras 2)
import numpy as np
import tensorflow as tf
import tf_keras as keras
from zoo.cli import format_table

PRETRAINED_TAG = "fashion_mnist"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rbnn_resnet18", help="a model with fashion_mnist weights")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the new head on the digits")
    parser.add_argument("--eval-images", type=int, default=0,
                        help="Fashion-MNIST test images to evaluate on (0: all 10 000)")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    parser.add_argument("--output", default=None, help="where to write the .tflite (default: a temp dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser.parse_args(argv)


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


def with_new_head(name: str, classes: int) -> keras.Model:
    """The pretrained body, frozen (BN in inference mode), under a new softmax head."""
    body = zoo.load(name, weights=PRETRAINED_TAG, include_top=False, pooling="avg")
    body.trainable = False
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(body.output)
    return keras.Model(body.input, outputs, name=f"{name}_digits")


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

    (x_train, y_train), (x_test, y_test) = digits(entry.input_shape[0])
    say(f"New head on scikit-learn's digits: {len(x_train)} train / {len(x_test)} test images, body frozen")
    model = with_new_head(args.model, classes=10)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=verbose)
    _, digits_accuracy = model.evaluate(x_test, y_test, verbose=verbose)

    output_dir = Path(args.output or tempfile.mkdtemp(prefix="zoo-quickstart-"))
    conversion = zoo.convert(model, output_dir / f"{args.model}-digits.tflite", verify_data=x_test,
                             verify_samples=len(x_test), progress=None if args.quiet else say)
    latency = zoo.benchmark(conversion.path, threads=1).results[0]

    report = {
        "model": args.model,
        "fashion_mnist_test_accuracy": round(float(fashion_accuracy), 4),
        "fashion_mnist_test_images": args.eval_images or entry.metrics["test_images"],
        "digits_train_images": len(x_train),
        "digits_test_images": len(x_test),
        "digits_test_accuracy": round(float(digits_accuracy), 4),
        "head_epochs": args.epochs,
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
        ["digits test accuracy (new head)",
         f"{report['digits_test_accuracy']:.2%} on {len(x_test)} images ({args.epochs} epochs on {len(x_train)})"],
        [".tflite", f"{conversion.path} ({conversion.file_bytes / 2**20:.2f} MiB)"],
        ["binary convs as LceBconv2d", f"{conversion.bconv2d} of {conversion.binary_layers}"],
        ["LCE interpreter vs Keras", f"{conversion.parity.top1_agreement:.2%} top-1 agreement, max |Δp| "
                                     f"{conversion.parity.max_abs_diff:.1e} on {conversion.parity.samples} digits"],
        ["LCE latency (x86, 1 thread)", f"{report['lce_latency_ms_median']} ms median"],
    ]
    print(format_table(rows, ["quickstart", args.model]))
    if not args.quiet:
        print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
