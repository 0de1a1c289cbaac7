"""Chooses the main job's fine-tune settings on held-out digits: the digits training split
(the main job's) is split again per class, the fine-tune runs on the larger part for every
candidate setting, from the shipped weights and from random initialisation, and is judged
on the held-out part. The digits test split is not read.

    python benchmarks/fine_tune_choice.py [--model rbnn_resnet18] [--epochs 8]

Every row has the main job's budget (epochs, batch 64, seed 0, Adam, cosine); the kept
setting is the one with the best held-out accuracy from the shipped weights. The rows from
random initialisation show whether that setting favours the pretrained start.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402,F401,I001  (first: selects Keras 2)
from sklearn.model_selection import train_test_split  # noqa: E402
from common import command_line, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402
from training.quickstart import PRETRAINED_TAG, SEED, FineTune, digits, fine_tune  # noqa: E402


def held_out_split(train, fraction: float):
    """``train`` split per class into (fit, held-out)."""
    x, y = train
    x_fit, x_held, y_fit, y_held = train_test_split(x, y, test_size=fraction, stratify=y, random_state=SEED)
    return (x_fit, y_fit), (x_held, y_held)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rbnn_resnet18")
    parser.add_argument("--epochs", type=int, default=FineTune.epochs)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[2e-3, 5e-4])
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 1e-4],
                        help="coupled decay (the RBNN recipe's is 1e-4)")
    parser.add_argument("--held-out", type=float, default=0.2, help="share of the digits training split held out")
    parser.add_argument("--name", default=None, help="results file name")
    args = parse_arguments(parser, argv, lambda a: f"fine_tune_choice_{a.model}")

    train, _ = digits()
    fit, held_out = held_out_split(train, args.held_out)
    rows = []
    for learning_rate, weight_decay in itertools.product(args.learning_rates, args.weight_decays):
        settings = FineTune(epochs=args.epochs, learning_rate=learning_rate, weight_decay=weight_decay)
        row = {"learning_rate": learning_rate, "weight_decay": weight_decay}
        for start, weights in (("pretrained", PRETRAINED_TAG), ("random_init", None)):
            _, accuracy, changed = fine_tune(args.model, weights, fit, held_out, settings)
            row[start] = {"held_out_accuracy": accuracy, "binary_weights_changed": changed}
            print(f"lr {learning_rate:g}, decay {weight_decay:g}, {start}: held-out {accuracy:.2%}, "
                  f"signs changed {changed:.2%}", flush=True)
        rows.append(row)
    kept = max(rows, key=lambda row: row["pretrained"]["held_out_accuracy"])

    command = command_line(__file__, argv)
    table = markdown_table(
        [[f"{row['learning_rate']:g}", f"{row['weight_decay']:g}",
          f"{row['pretrained']['held_out_accuracy']:.2%}", f"{row['pretrained']['binary_weights_changed']:.2%}",
          f"{row['random_init']['held_out_accuracy']:.2%}", f"{row['random_init']['binary_weights_changed']:.2%}",
          "kept" if row is kept else ""] for row in rows],
        ["Adam lr", "coupled decay", "held-out top-1, shipped weights", "signs changed",
         "held-out top-1, random init", "signs changed", ""])
    table += (f"\n\n{args.model}, fine-tuned whole under a new head on {len(fit[0])} digits, judged on "
              f"{len(held_out[0])} held out of the training split; {args.epochs} epochs, batch "
              f"{FineTune.batch_size}, seed {SEED}, Adam with a cosine decay.\n\n`{command}`")
    write_results(args.name, {"command": command, "model": args.model, "epochs": args.epochs,
                              "fit_images": len(fit[0]), "held_out_images": len(held_out[0]),
                              "rows": rows, "kept": kept}, table)


if __name__ == "__main__":
    main()
