"""Chooses the fine-tune after channel pruning of a trained binary model — Adam's learning
rate and the latent-weight magnitude the binary convs start from — on held-out training
images.

    python benchmarks/compress_fine_tune_choice.py [MODEL] [--learning-rates 1e-3 3e-4 1e-4] [--latents 0.01 0.1]

``compress.channel_prune`` gives every binary conv latent weights ``±latent`` (the signs of
its ±1 kernel); Adam moves a weight by about its learning rate a step, so the two together
decide how freely the fine-tune flips signs, and the rate alone how far it moves the float
parts. For each pair, two fine-tunes from the shipped ``fashion_mnist`` weights at the
``zoo compress`` budget and data order of ``benchmarks/compress.py`` (``--epochs`` x the
first ``--train-images`` training images, batch 64, Adam with a cosine decay, seed 0): the
uncompressed inference form (ratio 0) and the model pruned by ``--ratio`` with the filters
fading out over the first quarter. Each is judged on the last ``--held-out`` training
images, which neither the shipped weights (trained on the first 55 000) nor the fine-tune
saw; the test split is not read. The kept pair is the one whose pruned model scores best
there.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
import numpy as np  # noqa: E402
from common import command_line, parse_arguments, write_results  # noqa: E402
from training.loop import accuracy  # noqa: E402
from zoo import compress  # noqa: E402
from zoo.compress.common import is_binary_conv  # noqa: E402
from zoo.text import markdown_table  # noqa: E402

DATASET = "fashion_mnist"
TRAIN_SPLIT_IMAGES = 60_000
BATCH_SIZE = 64
SEED = 0


def kernel_signs(model) -> dict:
    return {layer.name: np.sign(layer.get_weights()[0]) for layer in model.layers if is_binary_conv(layer)}


def changed_share(before: dict, after: dict) -> float:
    changed = sum(int(np.sum(before[name] != after[name])) for name in before)
    return changed / sum(signs.size for signs in before.values())


def fine_tuned(name: str, ratio: float, learning_rate: float, latent: float, args, held_out) -> dict:
    """Held-out accuracy and signs changed after pruning by ``ratio`` (0: nothing removed)
    and the fine-tune from ``learning_rate`` and latent weights ``±latent``."""
    model = zoo.load(name, weights=DATASET, input_shape=(28, 28, 1), classes=10)
    ranked = zoo.load_dataset(DATASET, "train", batch_size=BATCH_SIZE, training=False, take=args.train_images)
    train = zoo.load_dataset(DATASET, "train", batch_size=BATCH_SIZE, take=args.train_images, seed=SEED)
    steps = int(train.cardinality())
    fade_steps = round(0.25 * args.epochs * steps) if ratio else 0
    pruning = compress.channel_prune(model, ratio, ranked, latent=latent, fade_steps=fade_steps)
    before = kernel_signs(pruning.model)
    compress.fine_tune(pruning.model, train, args.epochs, learning_rate, steps, pruning.callbacks, verbose=0)
    changed = changed_share(before, kernel_signs(pruning.model))
    tuned = compress.strip(pruning.model) if pruning.callbacks else pruning.model
    return {"held_out_accuracy": accuracy(tuned, held_out), "binary_weights_changed": changed}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="rbnn_resnet20")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    parser.add_argument("--latents", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--ratio", type=float, default=0.5, help="channel pruning ratio")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=15_000)
    parser.add_argument("--held-out", type=int, default=5_000, help="the last N training images")
    parser.add_argument("--name", default=None, help="results file name")
    args = parse_arguments(parser, argv, lambda a: f"compress_fine_tune_choice_{a.model}")
    if args.train_images + args.held_out > TRAIN_SPLIT_IMAGES:
        parser.error(f"--train-images and --held-out overlap: together {args.train_images + args.held_out} "
                     f"of {TRAIN_SPLIT_IMAGES} training images")

    held_out = zoo.load_dataset(DATASET, f"train[{TRAIN_SPLIT_IMAGES - args.held_out}:]", batch_size=256,
                                training=False)
    base = accuracy(zoo.load(args.model, weights=DATASET, input_shape=(28, 28, 1), classes=10), held_out)
    print(f"{args.model}, shipped weights: held-out {base:.2%}", flush=True)
    rows = []
    for learning_rate, latent in itertools.product(args.learning_rates, args.latents):
        row = {"learning_rate": learning_rate, "latent": latent}
        for label, ratio in (("control", 0.0), ("pruned", args.ratio)):
            row[label] = fine_tuned(args.model, ratio, learning_rate, latent, args, held_out)
            print(f"lr {learning_rate:g}, latent {latent:g}, {label}: held-out {row[label]['held_out_accuracy']:.2%}, "
                  f"signs changed {row[label]['binary_weights_changed']:.2%}", flush=True)
        rows.append(row)
    kept = max(rows, key=lambda row: row["pruned"]["held_out_accuracy"])

    command = command_line(__file__, argv)
    table = markdown_table(
        [[f"{row['learning_rate']:g}", f"{row['latent']:g}",
          f"{row['control']['held_out_accuracy']:.2%}", f"{row['control']['binary_weights_changed']:.2%}",
          f"{row['pruned']['held_out_accuracy']:.2%}", f"{row['pruned']['binary_weights_changed']:.2%}",
          "kept" if row is kept else ""] for row in rows],
        ["Adam lr", "latent magnitude", "held-out top-1, not pruned", "signs changed",
         f"held-out top-1, pruned {args.ratio:g}", "signs changed", ""])
    table += (f"\n\n{args.model} from its shipped weights (held-out top-1 {base:.2%}), fine-tuned {args.epochs} "
              f"epochs x the first {args.train_images} training images, batch {BATCH_SIZE}, seed {SEED}, Adam with a "
              f"cosine decay; judged on the last {args.held_out} training images. "
              f"Signs changed: share of the binary kernels' signs the fine-tune flipped (pruned: the full-width "
              f"model while its filters fade).\n\n`{command}`")
    write_results(args.name, {"command": command, "model": args.model, "base_held_out_accuracy": base,
                              "epochs": args.epochs, "train_images": args.train_images,
                              "ratio": args.ratio,
                              "held_out_images": args.held_out, "rows": rows, "kept": kept}, table)


if __name__ == "__main__":
    main()
