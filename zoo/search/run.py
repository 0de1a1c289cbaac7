"""``run_search``: one call from settings to a searched architecture (``zoo search`` runs it).

Order of work: names are checked (space, schemes, ops, tuner, budget), the budget is
checked against the space's least costs — before any data is read or model trained —
then the results directory is opened (a new one is created; an existing one with the
same settings is resumed, with other settings refused), the trials run, and the report
is written (:mod:`zoo.search.report`).

Data: trials train on the first ``train_images`` images of the dataset's train split
after holding out its last ``val_images`` images for validation: the test split is left
for the final comparison.

Distributed: with Keras Tuner's environment variables set (``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``) the same call is the chief (ID
containing "chief": serves the oracle, runs no trial, writes the report when all trials
are done) or a worker (runs trials, reports to the chief, writes no report). All
processes share the results directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from zoo.data import dataset_info, load_dataset
from zoo.search.budget import Budget, BudgetError, check_reachable
from zoo.search.report import write_report
from zoo.search import tuning
from zoo.search.spaces import get_space
from zoo.search.tuning import TUNERS, BinaryHyperModel, make_tuner, role
from zoo.text import readable

#: settings a resumed search must share with the one it continues (max_trials may grow)
_FIXED_SETTINGS = ("space", "dataset", "tuner", "budget", "epochs", "schemes", "ops", "train_images", "val_images",
                   "batch_size", "learning_rate", "patience", "seed")


def run_search(
    *,
    space: str = "bars",
    dataset: str = "fashion_mnist",
    budget=None,
    tuner: str = "bayesian",
    max_trials: int = 10,
    epochs: int = 2,
    output_dir="search",
    schemes=None,
    ops=None,
    train_images: int | None = 10_000,
    val_images: int = 5_000,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    patience: int = 2,
    seed: int = 0,
    data_dir=None,
    overwrite: bool = False,
    name: str | None = None,
    verbose: int = 1,
) -> dict | None:
    """Searches a binary architecture; returns the summary (None on a distributed worker).

    Args:
      space: ``"bnas"`` or ``"bars"`` (:mod:`zoo.search.spaces`).
      dataset: a dataset of ``zoo.load_dataset`` with a fixed image shape.
      budget: limits, e.g. ``"binary_macs=20M,float_macs=1M"`` or a dict
        (:class:`zoo.search.budget.Budget`); None: unconstrained.
      tuner: ``"hyperband"``, ``"bayesian"`` or ``"random"``.
      max_trials: at most this many trials (also for Hyperband).
      epochs: epochs per trial (Hyperband: the most any trial gets).
      output_dir: the results directory; an existing one with the same settings resumes.
      schemes, ops: the binarization schemes and cell ops searched (default: the space's).
      train_images, val_images: the training slice and the held-out validation images.
      batch_size, learning_rate, patience: trial training (Adam; early stopping patience).
      seed: oracle and weight-initialisation seed.
      overwrite: delete ``output_dir`` first.
      name: the architecture name of ``best.json`` (default ``<space>_<dataset>_<hash>``).
      verbose: 0 silent, 1 a line per trial, 2 also Keras Tuner's and Keras' progress.

    Raises:
      ValueError: a bad setting or name, an unreachable budget (:class:`BudgetError`, before
        any training), a results directory of another search; :class:`BudgetError` after
        the search when no trial found an architecture within the budget (the report is
        written all the same). ``zoo.data.DatasetNotFoundError``: data not prepared
        (before anything is written).
    """
    counts = {"max_trials": max_trials, "epochs": epochs, "train_images": train_images, "val_images": val_images,
              "batch_size": batch_size, "patience": patience}
    for setting, value in counts.items():
        least = 0 if setting == "patience" else 1
        if (value is not None or setting != "train_images") and (
                isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(f"{setting} (--{setting.replace('_', '-')}) must be an integer of at least {least}, "
                             f"got {value!r}.")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ValueError(f"learning_rate (--learning-rate) must be a positive number, got {learning_rate!r}.")
    search_space = get_space(space, schemes, ops)
    if tuner not in TUNERS:
        raise ValueError(f"Unknown tuner {tuner!r}; valid tuners: {', '.join(TUNERS)}.")
    info = dataset_info(dataset)
    input_shape, classes = info["image_shape"], info["num_classes"]
    if None in input_shape:
        raise ValueError(f"Dataset {dataset!r} has no fixed image shape; search on a dataset that has one.")
    budget = Budget.parse(budget)
    minima = check_reachable(search_space, budget, input_shape, classes)

    output_dir = Path(output_dir)
    process = role()
    settings = {
        "space": space, "dataset": dataset, "tuner": tuner, "budget": budget.as_dict(), "epochs": epochs,
        "schemes": list(search_space.schemes), "ops": list(search_space.ops), "train_images": train_images,
        "val_images": val_images, "batch_size": batch_size, "learning_rate": learning_rate, "patience": patience,
        "seed": seed, "max_trials": max_trials,
    }
    fit_args, fit_kwargs = (), {}
    if process != "chief":  # the chief only serves the oracle; data that is not prepared stops before any write
        fit_args = (load_dataset(dataset, f"train[:-{val_images}]", batch_size=batch_size, take=train_images,
                                 seed=seed, data_dir=data_dir),)
        fit_kwargs = {"validation_data": load_dataset(dataset, f"train[-{val_images}:]", batch_size=256,
                                                      training=False, data_dir=data_dir)}
    if process != "worker":
        _open_results_dir(output_dir, settings, overwrite)
    if verbose and process != "worker":
        print(f"zoo search: space {space} ({', '.join(search_space.schemes)}; ops {', '.join(search_space.ops)}), "
              f"budget {budget.describe()}" +
              "".join(f", least {metric} in the space {readable(value)}" for metric, value in minima.items()) +
              f"; {tuner}, {max_trials} trials x {epochs} epochs; results in {output_dir}", flush=True)

    hypermodel = BinaryHyperModel(search_space, input_shape, classes, budget, learning_rate, patience)
    keras_tuner = make_tuner(tuner, hypermodel, max_trials=max_trials, epochs=epochs, directory=output_dir, seed=seed)
    keras_tuner.search(*fit_args, epochs=epochs, verbose=2 if verbose >= 2 else 0, **fit_kwargs)
    if process == "worker":
        return None
    summary = write_report(output_dir, keras_tuner.oracle.trials.values(), search_space, settings, budget,
                           input_shape, classes, name=name)
    if summary["best_config"] is None:
        raise BudgetError(
            f"No trial was trained: none of {len(summary['trials'])} trials found an architecture within the budget "
            f"({budget.describe()}) in {tuning.MAX_SAMPLES} samples of the space (report in {output_dir}). "
            "Raise the budget, or narrow the space to cheaper architectures (schemes, ops)."
        )
    return summary


def _open_results_dir(output_dir: Path, settings: dict, overwrite: bool) -> None:
    path = output_dir / "search.json"
    if overwrite and output_dir.exists():
        shutil.rmtree(output_dir)
    if path.exists():
        previous = json.loads(path.read_text())
        different = [key for key in _FIXED_SETTINGS if previous.get(key) != settings[key]]
        if different:
            changes = ", ".join(f"{k}: {previous.get(k)!r} -> {settings[k]!r}" for k in different)
            raise ValueError(f"{output_dir} holds a search with other settings ({changes}); resume it with the "
                             "same settings, or pass overwrite / --overwrite, or another output directory.")
        print(f"zoo search: resuming the search in {output_dir}", flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2))
