"""The README's main job: a binary model end to end on real Fashion-MNIST, offline.

Lists the zoo, builds a model from the registry, fits it briefly on the real
Fashion-MNIST (Debian's files through the zoo's TFDS builder), evaluates it on the test
split, exports the inference model (±1 kernels, folded scales), checks parity, converts
it with Larq Compute Engine and runs the .tflite in LCE's interpreter.

    python -m training.quickstart [--model bireal_resnet20] [--epochs 2] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import zoo  # noqa: I001  (first: selects Keras 2)
import numpy as np
import tf_keras as keras
from zoo.cli import format_table
from zoo.export import convert_lce, op_histogram

#: Fashion-MNIST pixel statistics (train split, 0-255 scale), the model's first layer
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 72.94, 90.02


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bireal_resnet20", help="a CIFAR-style registry model")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=10_000, help="0 for the whole split")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    parser.add_argument("--output", default=None, help="where to write the .tflite (default: a temp dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    verbose = 0 if args.quiet else 1
    if args.quiet:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()

    say(f"zoo {zoo.__version__}: {len(zoo.list_models())} models, e.g. {', '.join(zoo.list_models('*_resnet20'))}")
    details = zoo.info(args.model, input_shape=(28, 28, 1))
    say(f"{args.model}: {details['method']}, {details['parameters']:,} parameters, "
        f"{details['binary_macs'] / 1e6:.1f}M binary MACs, {details['float_macs'] / 1e6:.2f}M float MACs")

    take = args.train_images or None
    train = zoo.load_dataset("fashion_mnist", "train", batch_size=args.batch_size, take=take,
                             data_dir=args.data_dir, seed=0)
    test = zoo.load_dataset("fashion_mnist", "test", batch_size=256, data_dir=args.data_dir)

    model = zoo.load(args.model, weights=None, input_shape=(28, 28, 1), classes=10,
                     input_mean=[FASHION_MNIST_MEAN], input_std=[FASHION_MNIST_STD])
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, verbose=verbose)
    train_seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(test, verbose=verbose)

    inference = zoo.to_inference(model)
    images = np.concatenate([x.numpy() for x, _ in test.take(4)])
    labels = np.concatenate([y.numpy() for _, y in test.take(4)])
    expected = inference.predict(images, verbose=0)
    # Exact up to float rounding; a near-zero pre-activation whose sign the rounding
    # flips can move a rare sample, so the share of samples within 1e-4 is reported.
    per_sample = np.max(np.abs(model.predict(images, verbose=0) - expected), axis=1)
    parity = float(np.mean(per_sample <= 1e-4))
    kernels = {v for layer in inference.layers if layer.name.endswith(("conv1", "conv2"))
               for v in np.unique(layer.get_weights()[0]).tolist()}

    flatbuffer = convert_lce(model)
    output_dir = Path(args.output or tempfile.mkdtemp(prefix="zoo-quickstart-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    tflite_path = output_dir / f"{args.model}-fashion_mnist.tflite"
    tflite_path.write_bytes(flatbuffer)
    ops = op_histogram(flatbuffer)

    from larq_compute_engine.tflite.python.interpreter import Interpreter

    interpreter = Interpreter(flatbuffer, num_threads=1, use_indirect_bgemm=True)
    lce_out = interpreter.predict(images)
    single = images[:1]
    for _ in range(5):
        interpreter.predict(single)
    timings = []
    for _ in range(50):
        t0 = time.perf_counter()
        interpreter.predict(single)
        timings.append(time.perf_counter() - t0)

    report = {
        "model": args.model,
        "train_images": take or 60_000,
        "epochs": args.epochs,
        "train_seconds": round(train_seconds, 1),
        "test_accuracy": round(float(accuracy), 4),
        "export_samples_within_1e-4": parity,
        "binary_kernel_values": sorted(kernels),
        "tflite": str(tflite_path),
        "tflite_bytes": len(flatbuffer),
        "lce_ops": ops,
        "lce_top1_agreement": float(np.mean(lce_out.argmax(1) == expected.argmax(1))),
        "lce_accuracy_on_1024": float(np.mean(lce_out.argmax(1) == labels)),
        "lce_latency_ms_median": round(1000 * float(np.median(timings)), 3),
    }
    rows = [
        ["test accuracy (10k real images)", f"{report['test_accuracy']:.2%}"],
        ["training", f"{report['epochs']} epochs x {report['train_images']} images, {report['train_seconds']} s"],
        ["export parity", f"{parity:.2%} of {len(images)} samples within 1e-4, kernels {sorted(kernels)}"],
        [".tflite", f"{tflite_path} ({len(flatbuffer) / 1024:.0f} KiB)"],
        ["LCE ops", ", ".join(f"{k} {v}" for k, v in ops.items())],
        ["LCE vs Keras top-1 agreement", f"{report['lce_top1_agreement']:.2%} on {len(images)} images"],
        ["LCE latency (x86, 1 thread)", f"{report['lce_latency_ms_median']} ms median"],
    ]
    print(format_table(rows, ["quickstart", args.model]))
    if not args.quiet:
        print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
    sys.exit(0)
