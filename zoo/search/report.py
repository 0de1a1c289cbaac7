"""The outcome of a search: every trial, the Pareto front, a plot, and the best architecture.

Written into the results directory:

* ``summary.json`` — settings, every trial (status, scheme, genotype, costs, validation
  accuracy or ``over_budget``), the Pareto front, the best trial;
* ``summary.md`` — the same as a readable table, best first;
* ``accuracy_vs_<metric>.png`` — validation accuracy against the budget's (first) cost,
  over all trials: trained trials as dots, the Pareto front (no other trial is both
  cheaper and more accurate) marked and joined, trials over budget as crosses on the
  axis (they were not trained), the limit as a dashed line;
* ``best.json`` — the most accurate trial within budget as a searched architecture
  (:mod:`zoo.architectures.searched.config`), served by ``zoo.load(path)`` / ``zoo.register_searched(path)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from zoo.architectures.searched.config import SearchedArchitecture
from zoo.architectures.searched.network import Genotype
from zoo.files import atomic_write
from zoo.search.budget import Budget
from zoo.search.tuning import trial_metrics
from zoo.text import markdown_table, readable

COSTS = ("binary_macs", "float_macs", "parameters", "latency_ms")
_LABELS = {"binary_macs": "binary MACs", "float_macs": "float MACs", "parameters": "parameters (Larq count)",
           "latency_ms": "LCE latency (ms, x86, 1 thread)"}


def trial_records(trials, space) -> list[dict]:
    """One JSON-ready record per Keras Tuner trial, in trial order."""
    records = []
    for trial in sorted(trials, key=lambda t: t.trial_id):
        metrics = trial_metrics(trial)
        candidate = space.candidate(trial.hyperparameters)
        trained = "val_accuracy" in metrics
        records.append({
            "trial_id": trial.trial_id,
            "status": trial.status,
            "scheme": candidate.scheme,
            "architecture": candidate.genotype.describe(),
            "genotype": candidate.genotype.to_dict(),
            "score": metrics.get("score"),
            "val_accuracy": metrics.get("val_accuracy"),
            "over_budget": bool(metrics.get("over_budget", 0.0)),
            "epochs": trial.hyperparameters.values.get("tuner/epochs"),
            "epochs_trained": int(metrics["epochs_trained"]) if trained else 0,
            "train_seconds": metrics.get("train_seconds"),
            **{name: _count(name, metrics[name]) for name in (*COSTS, "binary_convs") if name in metrics},
        })
    return records


def _count(name: str, value: float):
    """Counts as integers (Keras Tuner reports every metric as a float); latency stays a float."""
    return value if name == "latency_ms" else int(round(value))


def pareto_front(records: list[dict], metric: str) -> list[str]:
    """Trial ids of the trained trials no other trial beats in both ``metric`` (lower) and accuracy."""
    trained = sorted((r for r in records if r["val_accuracy"] is not None and metric in r),
                     key=lambda r: (r[metric], -r["val_accuracy"]))
    front, best = [], float("-inf")
    for record in trained:
        if record["val_accuracy"] > best:
            front.append(record["trial_id"])
            best = record["val_accuracy"]
    return front


def plot(records: list[dict], metric: str, budget: Budget, front: list[str], path: Path, title: str) -> Path:
    """Accuracy against ``metric`` over all trials, the Pareto front marked (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    trained = [r for r in records if r["val_accuracy"] is not None]
    over = [r for r in records if r["over_budget"]]
    on_front = sorted((r for r in trained if r["trial_id"] in front), key=lambda r: r[metric])
    axes.scatter([r[metric] for r in trained], [r["val_accuracy"] for r in trained], color="tab:blue",
                 alpha=0.6, label=f"trained ({len(trained)})")
    axes.plot([r[metric] for r in on_front], [r["val_accuracy"] for r in on_front], color="tab:red",
              marker="o", drawstyle="steps-post", label=f"Pareto front ({len(on_front)})")
    for record in on_front:
        axes.annotate(record["trial_id"], (record[metric], record["val_accuracy"]), textcoords="offset points",
                      xytext=(4, 4), fontsize=7)
    if over:
        axes.scatter([r[metric] for r in over], [0.0] * len(over), marker="x", color="tab:gray",
                     label=f"over budget, not trained ({len(over)})")
    limit = dict(budget.limits).get(metric)
    if limit is not None:
        axes.axvline(limit, color="black", linestyle="--", linewidth=1, label=f"budget {readable(limit)}")
    values = [r[metric] for r in records if metric in r]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: readable(value) if value > 0 else "0"))
    axes.set_xlabel(_LABELS[metric])
    axes.set_ylabel("validation accuracy")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def searched_name(space: str, dataset: str, scheme: str, genotype: dict) -> str:
    digest = hashlib.sha256(json.dumps({"scheme": scheme, "genotype": genotype}, sort_keys=True).encode())
    return f"{space}_{dataset}_{digest.hexdigest()[:8]}"


def markdown(summary: dict) -> str:
    settings = summary["settings"]
    metric = summary["plot_metric"]
    lines = [
        f"# Search `{settings['space']}` on {settings['dataset']}",
        "",
        f"Tuner {settings['tuner']}, {summary['counts']['trials']} trials ({summary['counts']['trained']} trained, "
        f"{summary['counts']['over_budget']} over budget, {summary['counts']['failed']} failed), "
        f"up to {settings['epochs']} epochs x {settings['train_images'] or 'all'} training images; "
        f"validation: {settings['val_images']} held-out training images. Budget: {summary['budget']}.",
        "",
    ]
    if summary["best"]:
        best = summary["best"]
        lines += [f"Best: trial {best['trial_id']}, `{summary['best_model']}` ({best['scheme']}), validation "
                  f"accuracy {best['val_accuracy']:.4f}; saved as `{summary['best_config']}`.", ""]
    else:
        lines += ["No trial within budget was trained.", ""]
    lines += [f"![accuracy vs {metric}]({Path(summary['plot']).name})", ""]
    headers = ["trial", "status", "scheme", "val acc", "binary MACs", "float MACs", "params", "Pareto", "architecture"]
    rows = []
    ranked = sorted(summary["trials"], key=lambda r: -(r["score"] if r["score"] is not None else float("-inf")))
    for r in ranked:
        accuracy = f"{r['val_accuracy']:.4f}" if r["val_accuracy"] is not None else (
            "over budget" if r["over_budget"] else "-")
        costs = [readable(r[name]) if name in r else "-" for name in ("binary_macs", "float_macs", "parameters")]
        pareto = "yes" if r["trial_id"] in summary["pareto_front"] else ""
        rows.append([r["trial_id"], r["status"], r["scheme"], accuracy, *costs, pareto, r["architecture"]])
    lines.append(markdown_table(rows, headers))
    return "\n".join(lines) + "\n"


def write_report(output_dir, trials, space, settings: dict, budget: Budget, input_shape, classes: int,
                 name: str | None = None) -> dict:
    """Writes summary.json / .md, the plot and best.json into ``output_dir``; returns the summary."""
    output_dir = Path(output_dir)
    records = trial_records(trials, space)
    metric = budget.metrics[0] if budget else "binary_macs"
    front = pareto_front(records, metric)
    within = [r for r in records if r["val_accuracy"] is not None and not r["over_budget"]]
    best = max(within, key=lambda r: r["val_accuracy"], default=None)
    summary = {
        "settings": settings,
        "budget": budget.describe(),
        "counts": {
            "trials": len(records),
            "trained": sum(r["val_accuracy"] is not None for r in records),
            "over_budget": sum(r["over_budget"] for r in records),
            "failed": sum(r["status"] not in ("COMPLETED", "RUNNING") for r in records),
        },
        "plot_metric": metric,
        "pareto_front": front,
        "best": best,
        "best_model": None,
        "best_config": None,
        "trials": records,
    }
    if best is not None:
        searched = SearchedArchitecture(
            name=name or searched_name(space.name, settings["dataset"], best["scheme"], best["genotype"]),
            scheme=best["scheme"],
            genotype=Genotype.from_dict(best["genotype"]),
            input_shape=tuple(input_shape),
            classes=classes,
            costs={k: best[k] for k in (*COSTS, "binary_convs") if k in best},
            search={**settings, "trial_id": best["trial_id"], "val_accuracy": best["val_accuracy"],
                    "epochs_trained": best["epochs_trained"]},
        )
        summary["best_config"] = str(searched.save(output_dir / "best.json"))
        summary["best_model"] = searched.model_name
    summary["plot"] = str(plot(records, metric, budget, front, output_dir / f"accuracy_vs_{metric}.png",
                               f"{settings['space']} on {settings['dataset']}: {len(records)} trials, "
                               f"budget {budget.describe()}"))
    atomic_write(output_dir / "summary.json", json.dumps(summary, indent=2))
    atomic_write(output_dir / "summary.md", markdown(summary))
    return summary
