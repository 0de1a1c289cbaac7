"""The Keras Tuner side of the search: the hypermodel of a space and tuners that keep a budget.

The tuners are Keras Tuner's own (``random``, ``bayesian``, ``hyperband``) with one
change, in :class:`BudgetedTuner`: a trial's model is built and its inference form costed
(:func:`zoo.search.budget.model_costs`) before training. A new candidate over the budget
is replaced by random points of the space until one fits (at most :data:`MAX_SAMPLES`;
the trial records the candidate it trained, so the oracle learns from it), so that
``max_trials`` trials train ``max_trials`` architectures within the budget. Only when no
sample fits is a trial recorded untrained, with its costs, ``over_budget = 1`` and a
negative score (see :mod:`zoo.search.budget`). A trained trial scores its best
validation accuracy; early stopping ends it after ``patience`` epochs without a better
one. Everything else — results directory, resuming (``overwrite=False`` reloads it), the
chief / worker mode of ``KERASTUNER_TUNER_ID`` / ``KERASTUNER_ORACLE_IP`` /
``KERASTUNER_ORACLE_PORT`` — is Keras Tuner's. Each process appends one JSON line per trial start and end to
``events.jsonl`` in the results directory (the progress log; ``tuner_id`` says which
process ran it) and prints a line per finished trial.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import tf_keras as keras

from zoo import registry
from zoo.architectures.searched.network import SearchedNetwork
from zoo.search.budget import Budget, model_costs
from zoo.search.kt import keras_tuner as kt
from keras_tuner.src.distribute import utils as distribute  # noqa: I001  (after zoo.search.kt)
from zoo.text import readable

OBJECTIVE = kt.Objective("score", direction="max")
#: candidates a trial draws, the oracle's first, before it is recorded over budget untrained
MAX_SAMPLES = 50
COST_NAMES = ("binary_macs", "float_macs", "parameters", "latency_ms")


class ValidationScore(keras.callbacks.Callback):
    """Logs ``score`` = ``val_accuracy`` each epoch, so Keras Tuner keeps the best epoch's weights."""

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = logs["val_accuracy"]


class BinaryHyperModel(kt.HyperModel):
    """Builds a space's candidates as compiled models and trains them (Adam, cross-entropy)."""

    def __init__(self, space, input_shape, classes: int, budget: Budget = Budget(),
                 learning_rate: float = 2e-3, patience: int = 2):
        super().__init__(name=f"zoo_{space.name}", tunable=True)
        self.space = space
        self.input_shape = tuple(input_shape)
        self.classes = int(classes)
        self.budget = budget
        self.learning_rate = float(learning_rate)
        self.patience = int(patience)

    def build(self, hp) -> keras.Model:
        candidate = self.space.candidate(hp)
        network = SearchedNetwork(f"{self.space.name}_candidate", candidate.genotype, self.input_shape, self.classes)
        model = network(registry.get_scheme(candidate.scheme))
        model.compile(keras.optimizers.Adam(self.learning_rate), keras.losses.SparseCategoricalCrossentropy(),
                      metrics=["accuracy"])
        return model

    def fit(self, hp, model, *args, callbacks=(), epochs=1, **kwargs):
        scheme = registry.get_scheme(self.space.candidate(hp).scheme)
        callbacks = [
            ValidationScore(),
            *scheme.callbacks(epochs),
            keras.callbacks.EarlyStopping("val_accuracy", patience=self.patience, mode="max"),
            *callbacks,
        ]
        return model.fit(*args, callbacks=callbacks, epochs=epochs, **kwargs)

    def costs(self, model: keras.Model) -> dict:
        return model_costs(model, latency="latency_ms" in self.budget.metrics)

    def space_parameters(self) -> list:
        """The space's hyperparameters (Keras Tuner's objects: each can draw a random value)."""
        hp = kt.HyperParameters()
        self.space.candidate(hp)
        return list(hp.space)


class BudgetedTuner:
    """Mixin for Keras Tuner's tuners: the budget check before training, seeds, progress."""

    def __init__(self, *args, events_file, seed: int = 0, **kwargs):
        self.events_file = Path(events_file)
        self.seed = int(seed)
        self._results = {}
        super().__init__(*args, seed=seed, **kwargs)

    def _build_and_fit_model(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        model, costs, excess = self._candidate_within_budget(trial)
        if excess > 0:
            # Hyperband may promote it all the same: give it weights to continue from.
            model.save_weights(self._get_checkpoint_fname(trial.trial_id))
            result = {"score": -excess, "over_budget": 1.0, **costs}
        else:
            start = time.perf_counter()
            history = self.hypermodel.fit(hp, model, *args, **kwargs)
            accuracy = history.history["val_accuracy"]
            result = {
                "score": float(max(accuracy)),
                "val_accuracy": float(max(accuracy)),
                "over_budget": 0.0,
                "epochs_trained": float(len(accuracy)),
                "train_seconds": round(time.perf_counter() - start, 1),
                **costs,
            }
        self._results[trial.trial_id] = result
        return result

    def _candidate_within_budget(self, trial):
        """(model, costs, excess over the budget) of the trial's candidate, its values replaced
        by random points of the space (seeded by the trial) while over budget, up to
        :data:`MAX_SAMPLES` candidates. A Hyperband trial continuing another keeps its values."""
        hp = trial.hyperparameters
        rng = random.Random(self._trial_seed(trial))
        for sample in range(1, MAX_SAMPLES + 1):
            model = self._try_build(hp)
            costs = {name: float(value) for name, value in self.hypermodel.costs(model).items()}
            excess = self.hypermodel.budget.excess(costs)
            if excess <= 0 or sample == MAX_SAMPLES or "tuner/trial_id" in hp.values:
                return model, costs, excess
            for parameter in self.hypermodel.space_parameters():
                hp.values[parameter.name] = parameter.random_sample(rng.randrange(2**31))

    def on_search_begin(self):
        super().on_search_begin()
        self.save()  # marks the results directory as a project, so even a first trial killed resumes

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        keras.utils.set_random_seed(self._trial_seed(trial))
        self._event("start", trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        result = self._results.pop(trial.trial_id, {})
        self._event("end", trial, result)
        print(self._progress_line(trial, result), flush=True)

    def _trial_seed(self, trial) -> int:
        return self.seed * 100_003 + int(trial.trial_id)

    def _event(self, event: str, trial, result=None):
        record = {"event": event, "trial_id": trial.trial_id, "tuner_id": self.tuner_id, "pid": os.getpid(),
                  "time": time.time(), "status": trial.status, **(result or {})}
        with open(self.events_file, "a") as log:  # one short line per write: appends from several processes stay whole
            log.write(json.dumps(record) + "\n")

    def _progress_line(self, trial, result: dict) -> str:
        head = f"[{self.tuner_id}] trial {trial.trial_id} {trial.status}"
        if not result:
            lines = (trial.message or "no result").strip().splitlines()
            return f"{head}: {lines[-1]}"
        candidate = self.hypermodel.space.candidate(trial.hyperparameters)
        costs = " ".join(f"{name} {readable(result[name])}" for name in COST_NAMES if name in result)
        if result["over_budget"]:
            outcome = f"over budget ({self.hypermodel.budget.describe()}): not trained"
        else:
            outcome = (f"val_accuracy {result['val_accuracy']:.4f} after {int(result['epochs_trained'])} epochs, "
                       f"{result['train_seconds']:.0f} s")
        return f"{head} {candidate.scheme} | {costs} | {outcome} | {candidate.genotype.describe()}"


class RandomSearch(BudgetedTuner, kt.RandomSearch):
    pass


class BayesianOptimization(BudgetedTuner, kt.BayesianOptimization):
    pass


class Hyperband(BudgetedTuner, kt.Hyperband):
    pass


TUNERS = {"hyperband": Hyperband, "bayesian": BayesianOptimization, "random": RandomSearch}


def make_tuner(kind: str, hypermodel: BinaryHyperModel, *, max_trials: int, epochs: int, directory,
               seed: int = 0, project_name: str = "trials"):
    """A budgeted Keras Tuner tuner over ``directory/project_name`` (reloaded if it exists).

    ``bayesian`` starts from ``max(3, max_trials // 3)`` random trials (Keras Tuner's default,
    3 per hyperparameter, would make a short search all random); ``hyperband`` runs its
    brackets up to ``epochs`` epochs, stopped at ``max_trials`` trials.
    """
    if kind not in TUNERS:
        raise ValueError(f"Unknown tuner {kind!r}; valid tuners: {', '.join(TUNERS)}.")
    common = dict(hypermodel=hypermodel, objective=OBJECTIVE, seed=seed, directory=str(directory),
                  project_name=project_name, overwrite=False, events_file=Path(directory) / "events.jsonl")
    if kind == "hyperband":
        tuner = Hyperband(max_epochs=epochs, factor=3, **common)
        tuner.oracle.max_trials = max_trials
        return tuner
    if kind == "bayesian":
        return BayesianOptimization(max_trials=max_trials, num_initial_points=max(3, max_trials // 3), **common)
    return RandomSearch(max_trials=max_trials, **common)


def trial_metrics(trial) -> dict:
    """The last reported value of every metric of a Keras Tuner trial."""
    return {name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics}


def role() -> str:
    """``"chief"`` or ``"worker"`` in Keras Tuner's distributed mode (from its environment
    variables, which it checks), else ``"local"``."""
    if not distribute.has_chief_oracle():
        return "local"
    return "chief" if distribute.is_chief_oracle() else "worker"
