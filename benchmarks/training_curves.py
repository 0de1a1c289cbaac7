"""Methods side by side from their `zoo train` runs: test accuracy per epoch of every run
on one plot (PNG) and a table (JSON + markdown), read from the runs' own records.

    python benchmarks/training_curves.py runs/fp_resnet20 runs/bnn_resnet20 --name same_budget_fashion_mnist

Each RUN is a `zoo train` output directory (its `report.json`, written when the run
finished); `--recorded results/NAME.json` adds the runs an earlier table recorded, so a
second seed joins a table whose first runs' directories are gone; `--model NAME` keeps only
that model's runs (repeatable), e.g. one model's runs out of a table of methods. The table gives the
budget each run had (epochs x training images, batch, recipe, optimizer), the held-out
accuracy per epoch where the run held images out, the test accuracy per epoch, the final
test accuracy before and after the BatchNorm re-estimation, and the run's command. Runs
with different budgets are refused unless ``--mixed-budgets`` is given: a comparison of
methods is made at equal budgets. Where a model has runs of several seeds, a second table
gives each seed's final test accuracy, their mean and their spread. Runs of one model with
different recipes (a recipe choice) are labelled by the recipe fields that differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, parse_arguments, write_results  # noqa: E402
from zoo.text import markdown_table  # noqa: E402


def read_run(directory: Path) -> dict:
    report_file = directory / "report.json"
    if not report_file.is_file():
        raise SystemExit(f"training_curves.py: error: {report_file} does not exist (has the run finished?)")
    report = json.loads(report_file.read_text())
    history = report["history"]
    held_out = report.get("validation") == "held-out training images"
    test = [row["test_accuracy" if held_out else "val_accuracy"] for row in history]
    recipe = report["recipe"]
    return {
        "model": report["model"],
        "seed": report["budget"].get("seed", 0),
        "budget": {"epochs": report["epochs_done"], "train_images": report["train_images_per_epoch"],
                   "batch_size": recipe["batch_size"]},
        "recipe": recipe,
        "held_out_accuracy": [row["val_accuracy"] for row in history] if held_out else None,
        "test_accuracy": test,
        "final_test_accuracy": test[-1],
        "test_top1_after_bn_recalibration": report.get("test_top1", None if held_out else
                                                       report.get("bn_recalibration", {}).get("val_accuracy_after")),
        "command": report["command"],
    }


#: what a run carries, as read_run gives it and a results file records it
RUN_FIELDS = ("model", "seed", "budget", "recipe", "held_out_accuracy", "test_accuracy", "final_test_accuracy",
              "test_top1_after_bn_recalibration", "command")


def recorded_runs(path: Path) -> list[dict]:
    """The runs an earlier results file of this script records (its ``runs``), for runs whose
    directories are gone."""
    try:
        runs = json.loads(path.read_text())["runs"]
        if not isinstance(runs, dict) or not runs:
            raise ValueError("no runs")
        for label, run in runs.items():
            missing = [field for field in RUN_FIELDS if field not in run]
            if missing:
                raise ValueError(f"run {label!r} has no {', '.join(missing)}")
            accuracies = run["test_accuracy"]
            if not (isinstance(run["budget"], dict) and isinstance(run["recipe"], dict) and isinstance(accuracies, list)
                    and accuracies and all(isinstance(a, (int, float)) for a in accuracies)):
                raise ValueError(f"run {label!r} has a malformed budget, recipe or test accuracy")
    except (OSError, KeyError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise SystemExit(f"training_curves.py: error: --recorded {path}: not a results file of this script ({err}).")
    return [{field: run[field] for field in RUN_FIELDS} for run in runs.values()]


def plot(runs: dict, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for label, run in runs.items():
        epochs = range(1, len(run["test_accuracy"]) + 1)
        axes.plot(epochs, [100 * a for a in run["test_accuracy"]], marker="o", markersize=3, label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("test top-1 (%)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(title)
    figure.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="zoo train output directories")
    parser.add_argument("--recorded", action="append", type=Path, default=[], metavar="RESULTS_JSON",
                        help="also the runs an earlier results file of this script records (for runs whose "
                             "directories are gone)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="keep only this model's runs (repeatable; default: every run)")
    parser.add_argument("--mixed-budgets", action="store_true", help="allow runs with different budgets")
    parser.add_argument("--name", required=True, help="results file name")
    args = parse_arguments(parser, argv)
    read = [run for path in args.recorded for run in recorded_runs(path)] + [read_run(d) for d in args.runs]
    if not read:
        parser.error("give at least one run directory or --recorded file")
    if args.model:
        absent = sorted(set(args.model) - {run["model"] for run in read})
        if absent:
            parser.error(f"--model {', '.join(absent)}: no such run among the given ones")
        read = [run for run in read if run["model"] in args.model]
    name_variants(read)
    seeds = {}
    for run in read:
        seeds.setdefault(run["group"], []).append(run["seed"])
    for group, group_seeds in seeds.items():
        if len(set(group_seeds)) != len(group_seeds):
            parser.exit(2, f"training_curves.py: error: two runs of {group} with the same seed.\n")
    runs = {run["group"] if len(seeds[run["group"]]) == 1 else f"{run['group']} (seed {run['seed']})": run
            for run in read}
    budgets = {json.dumps(run["budget"], sort_keys=True) for run in runs.values()}
    if len(budgets) > 1 and not args.mixed_budgets:
        parser.exit(2, f"training_curves.py: error: the runs have different budgets ({'; '.join(sorted(budgets))}); "
                       "compare runs of one budget, or pass --mixed-budgets.\n")

    rows = [[label, f"{run['budget']['epochs']} x {run['budget']['train_images']}, batch {run['budget']['batch_size']}",
             f"{run['recipe']['name']}, {run['recipe'].get('optimizer_name', 'sgd')} {run['recipe']['learning_rate']}",
             " / ".join(f"{100 * a:.1f}" for a in run["held_out_accuracy"]) if run["held_out_accuracy"] else "—",
             " / ".join(f"{100 * a:.1f}" for a in run["test_accuracy"]),
             f"{100 * run['final_test_accuracy']:.2f} %",
             "" if run["test_top1_after_bn_recalibration"] is None
             else f"{100 * run['test_top1_after_bn_recalibration']:.2f} %"]
            for label, run in runs.items()]
    table = markdown_table(rows, ["model", "budget (epochs x images)", "recipe", "held-out top-1 per epoch (%)",
                                  "test top-1 per epoch (%)",
                                  "final test top-1", "after BN re-estimation (the run's weights file)"])
    table += ("\n\nHeld-out: the run's held-out training images (where it held some out; recipes and schedules "
              "are chosen there). Test: all 10 000 Fashion-MNIST test images after each epoch, measured only. "
              "Commands:\n\n"
              + "\n".join(f"- `{run['command']}`" for run in runs.values())
              + f"\n\n![test accuracy per epoch]({args.name}.png)")
    spread = seed_spread(read)
    if spread:
        table += "\n\n" + markdown_table(
            [[model, ", ".join(map(str, row["seeds"])), " / ".join(f"{100 * a:.2f}" for a in row["test_top1"]),
              f"{100 * row['mean']:.2f} %", f"{100 * row['range']:.2f}"] for model, row in spread.items()],
            ["model", "seeds", "test top-1 per seed (%)", "mean", "range (points)"])
        table += ("\n\nTest top-1 after the BN re-estimation (the run's weights file), or the last epoch's "
                  "where a run has none.")
    RESULTS.mkdir(exist_ok=True)
    plot(runs, RESULTS / f"{args.name}.png", "Fashion-MNIST, test top-1 per epoch")
    write_results(args.name, {"runs": runs, "seeds": spread}, table)


def name_variants(runs: list[dict]) -> None:
    """Gives each run its ``group``: the model, and where the model's runs differ in recipe (a
    recipe choice), the recipe fields that differ, e.g. ``fp_resnet20 (weight_decay 0.0005)``.
    Runs of one group differ only in their seed."""
    recipes = {}
    for run in runs:
        recipes.setdefault(run["model"], []).append(run["recipe"])
    for run in runs:
        model_recipes = recipes[run["model"]]
        recipe = run["recipe"]
        differing = [f"{field} {recipe[field]}" for field in recipe
                     if len({json.dumps(other.get(field)) for other in model_recipes}) > 1]
        run["group"] = run["model"] + (f" ({', '.join(differing)})" if differing else "")


def seed_spread(runs: list[dict]) -> dict:
    """Per group of runs with more than one seed: the seeds, each one's final test top-1, mean and range."""
    by_group = {}
    for run in runs:
        final = run["test_top1_after_bn_recalibration"]
        by_group.setdefault(run["group"], []).append((run["seed"], run["final_test_accuracy"] if final is None else final))
    spread = {}
    for group, results in by_group.items():
        if len(results) > 1:
            results.sort()
            accuracies = [accuracy for _, accuracy in results]
            spread[group] = {"seeds": [seed for seed, _ in results], "test_top1": accuracies,
                             "mean": sum(accuracies) / len(accuracies), "range": max(accuracies) - min(accuracies)}
    return spread


if __name__ == "__main__":
    main()
