"""A searched binary architecture against a hand-made one, on real Fashion-MNIST, same training budget.

1. Budget: the baseline's binary MACs at 28x28x1, counted as the search counts them
   (Larq's profiler on the exported inference model).
2. Search (``zoo.search.run_search``) under that budget: trials train on the first
   ``--trial-images`` images of the train split and are validated on its last
   ``--val-images`` (held out: the test split is not seen by the search).
3. The best searched architecture (its ``best.json``, served by the registry) and the
   baseline are trained with the same recipe, epochs, images, batch size and seeds
   (``training.loop.train``, as ``zoo train``) and evaluated on the 10 000 test images
   (best accuracy over epochs, the reference protocol; mean over seeds).

Goal: the searched model beats the baseline at no more binary MACs, or matches it (within
``--match-tolerance``) with at least 25 % fewer binary MACs.

    python benchmarks/search.py --baseline bnn_resnet20 --space bars --tuner bayesian --max-trials 30 \\
        --trial-epochs 2 --trial-images 6000 --epochs 3 --train-images 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402,I001  (first: selects Keras 2)
import tf_keras as keras  # noqa: E402
from common import RESULTS, command_line, parse_arguments, write_results  # noqa: E402
from training.loop import train  # noqa: E402
from training.recipes import Recipe, recipe_for  # noqa: E402
from zoo.search import run_search  # noqa: E402
from zoo.search.budget import model_costs  # noqa: E402
from zoo.text import markdown_table, readable  # noqa: E402

SHAPE = (28, 28, 1)


@dataclasses.dataclass(frozen=True)
class AdamCosine(Recipe):
    """Adam, cosine decay per epoch from ``learning_rate``: the search trials' optimiser."""

    learning_rate: float = 2e-3

    def optimizer(self) -> keras.optimizers.Optimizer:
        return keras.optimizers.Adam(self.learning_rate)


def costs_of(name: str) -> dict:
    return model_costs(zoo.load(name, weights=None, input_shape=SHAPE, classes=10))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="bnn_resnet20")
    parser.add_argument("--space", default="bars")
    parser.add_argument("--tuner", default="bayesian")
    parser.add_argument("--max-trials", type=int, default=30)
    parser.add_argument("--trial-epochs", type=int, default=2)
    parser.add_argument("--trial-images", type=int, default=6_000)
    parser.add_argument("--val-images", type=int, default=5_000)
    parser.add_argument("--schemes", default=None, help="comma-separated (default: the space's)")
    parser.add_argument("--recipe", default="adam", help="'adam' (the trials' Adam, cosine) or a method's recipe")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="Adam learning rate (trials and 'adam')")
    parser.add_argument("--epochs", type=int, default=3, help="final training epochs (both models)")
    parser.add_argument("--train-images", type=int, default=20_000, help="final training images per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=1, help="final trainings per model (seeds 0..N-1)")
    parser.add_argument("--match-tolerance", type=float, default=0.005, help="accuracy counted as a match")
    parser.add_argument("--output", default="runs/search_benchmark", help="the search's results directory")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default=None, help="results file name")
    args = parse_arguments(parser, argv, lambda a: f"search_{a.space}_vs_{a.baseline}")
    start = time.perf_counter()

    baseline_costs = costs_of(args.baseline)
    budget = f"binary_macs={baseline_costs['binary_macs']}"
    search = run_search(
        space=args.space, dataset="fashion_mnist", budget=budget, tuner=args.tuner, max_trials=args.max_trials,
        epochs=args.trial_epochs, output_dir=args.output, train_images=args.trial_images, val_images=args.val_images,
        batch_size=args.batch_size, learning_rate=args.learning_rate, data_dir=args.data_dir,
        schemes=args.schemes.split(",") if args.schemes else None,
    )
    search_seconds = time.perf_counter() - start
    if search["best_config"] is None:
        raise SystemExit("The search trained no architecture within budget: nothing to compare.")
    searched = search["best_config"]

    if args.recipe == "adam":
        recipe = AdamCosine(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate)
    else:
        recipe = recipe_for(args.baseline, args.epochs, args.batch_size, method=args.recipe)
    results = {}
    for label, model in (("searched", searched), ("baseline", args.baseline)):
        reports = [train(model, "fashion_mnist", recipe=recipe, train_images=args.train_images, seed=seed,
                         data_dir=args.data_dir, export=False, verbose=2)[1] for seed in range(args.seeds)]
        results[label] = {
            "model": zoo.register_searched(searched) if label == "searched" else model,
            "costs": costs_of(model),
            "test_accuracy": statistics.mean(r["best_val_accuracy"] for r in reports),
            "final_test_accuracy": statistics.mean(r["final_val_accuracy"] for r in reports),
            "train_seconds": sum(r["train_seconds"] for r in reports),
            "runs": [{k: r[k] for k in ("best_val_accuracy", "final_val_accuracy", "train_seconds")} for r in reports],
        }
        print(f"{label} {results[label]['model']}: test accuracy {results[label]['test_accuracy']:.4f}", flush=True)

    found, base = results["searched"], results["baseline"]
    fewer = 1 - found["costs"]["binary_macs"] / base["costs"]["binary_macs"]
    verdict = {
        "binary_macs_fewer": fewer,
        "accuracy_gain": found["test_accuracy"] - base["test_accuracy"],
        "beats_at_no_more_binary_macs": found["test_accuracy"] > base["test_accuracy"] and fewer >= 0,
        "matches_with_25pct_fewer_binary_macs": (found["test_accuracy"] >= base["test_accuracy"] - args.match_tolerance
                                                 and fewer >= 0.25),
    }
    verdict["goal_met"] = verdict["beats_at_no_more_binary_macs"] or verdict["matches_with_25pct_fewer_binary_macs"]
    total_seconds = time.perf_counter() - start

    name = args.name
    config_copy = RESULTS / f"{name}_best.json"
    RESULTS.mkdir(exist_ok=True)
    shutil.copyfile(searched, config_copy)
    command = command_line(__file__, argv)
    rows = [
        [f"`{r['model']}`", readable(r["costs"]["binary_macs"]), readable(r["costs"]["float_macs"]),
         readable(r["costs"]["parameters"]), f"{r['test_accuracy']:.2%}", f"{r['final_test_accuracy']:.2%}",
         f"{r['train_seconds']:.0f}"]
        for r in (found, base)
    ]
    table = markdown_table(rows, ["model", "binary MACs", "float MACs", "params (Larq)", "best test accuracy",
                                  "final test accuracy", "train seconds"])
    counts = search["counts"]
    best = search["best"]
    table += (
        f"\n\nSearch: space {args.space}, {args.tuner}, budget {search['budget']}; {counts['trials']} trials "
        f"({counts['trained']} trained, {counts['over_budget']} over budget), {args.trial_epochs} epochs x "
        f"{args.trial_images} images each, validated on {args.val_images} held-out training images; best trial "
        f"{best['trial_id']} ({best['scheme']}; {best['architecture']}), validation accuracy "
        f"{best['val_accuracy']:.2%}; {search_seconds / 60:.1f} min.\n"
        f"Final training, both models: {args.epochs} epochs x {args.train_images} images, batch "
        f"{args.batch_size}, recipe {type(recipe).__name__} (lr {recipe.learning_rate}), {args.seeds} seed(s); "
        f"real Fashion-MNIST test set (10 000 images).\n"
        f"Searched vs baseline: {fewer:.1%} fewer binary MACs, accuracy {verdict['accuracy_gain'] * 100:+.2f} pp; "
        f"goal met: {verdict['goal_met']}. Total {total_seconds / 60:.1f} min.\n"
        f"Searched architecture: `benchmarks/results/{config_copy.name}`.\n\n`{command}`"
    )
    write_results(name, {
        "command": command, "baseline": args.baseline, "search_settings": search["settings"],
        "search_counts": counts, "search_best_trial": best, "search_seconds": round(search_seconds, 1),
        "searched_config": str(config_copy.relative_to(RESULTS.parent.parent)),
        "recipe": {"name": type(recipe).__name__, **dataclasses.asdict(recipe)},
        "results": results, "verdict": verdict, "total_seconds": round(total_seconds, 1),
    }, table)


if __name__ == "__main__":
    main()
