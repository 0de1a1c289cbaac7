"""The settings of a ``zoo train`` run, in one table: each one's flag, what values it takes,
whether the run records it (a resumed run may not contradict it) and the recipe field it
overrides. The command line, the loop, the checkpoint checks and the reproducing command
all read this table.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Setting(NamedTuple):
    key: str  #: ``train``'s keyword and the run's ``state.json`` field
    flag: str  #: ``zoo train``'s option
    kind: str  #: one of :data:`KINDS`
    recorded: bool = True  #: kept with the run's checkpoints and checked on ``--resume``
    recipe_field: str | None = None  #: the :class:`training.recipes.Recipe` field it overrides
    method: str | None = None  #: the one scheme whose recipe has the field (others refuse it)
    acts_on: str | None = None  #: the method's layers it needs in the model, and what for


#: what each kind of setting accepts (None, not given, always: the recipe's default)
KINDS = ("count", "non-negative count", "positive number", "non-negative number", "name")

#: in the order of the reproducing command line (after the model, dataset, epochs and batch size)
SETTINGS = (
    Setting("epochs", "--epochs", "count"),
    Setting("batch_size", "--batch-size", "count"),
    Setting("method", "--recipe", "name"),
    Setting("train_images", "--train-images", "count"),
    Setting("test_images", "--test-images", "count", recorded=False),
    Setting("teacher", "--teacher", "name"),
    Setting("seed", "--seed", "non-negative count"),
    Setting("val_images", "--val-images", "count"),
    Setting("optimizer", "--optimizer", "name", recipe_field="optimizer_name"),
    Setting("learning_rate", "--learning-rate", "positive number", recipe_field="learning_rate"),
    Setting("weight_decay", "--weight-decay", "non-negative number", recipe_field="weight_decay"),
    Setting("schedule", "--schedule", "name", recipe_field="schedule"),
    Setting("centre_loss_epochs", "--centre-loss-epochs", "non-negative count", recipe_field="centre_loss_epochs",
            method="cbcn"),
    Setting("kernel_loss_weight", "--kernel-loss-weight", "non-negative number", recipe_field="kernel_loss_weight",
            method="bonn", acts_on="BONN layers for λ to weigh"),
    Setting("theta_init", "--theta-init", "name", recipe_field="theta_init", method="rbnn",
            acts_on="RBNN layers for θ to start in"),
    Setting("adversarial_weight", "--adversarial-weight", "non-negative number", recipe_field="adversarial_weight",
            method="rbcn", acts_on="rectified convs for the adversarial term to train"),
)
BY_KEY = {setting.key: setting for setting in SETTINGS}


def flag(key: str) -> str:
    return BY_KEY[key].flag


def lacking_layers(key: str, model_name: str) -> str:
    """Why a model without the method's layers refuses the setting ``key`` (its ``acts_on``)."""
    return f"{model_name} has no {BY_KEY[key].acts_on}."


def recipe_overrides(settings: dict) -> dict:
    """The recipe fields the given settings override (None: not given)."""
    return {s.recipe_field: settings[s.key] for s in SETTINGS
            if s.recipe_field is not None and settings.get(s.key) is not None}


def value_problem(kind: str, value) -> str | None:
    """What is wrong with ``value`` for a setting of ``kind`` (None: nothing; None is fine)."""
    if value is None:
        return None
    if kind in ("count", "non-negative count"):
        least = 0 if kind == "non-negative count" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            return f"must be {'a non-negative' if least == 0 else 'a positive'} integer, got {value!r}"
    elif kind in ("positive number", "non-negative number"):
        positive = kind == "positive number"
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
                or (positive and value == 0)):
            return f"must be a {'positive' if positive else 'non-negative'} number, got {value!r}"
    elif not isinstance(value, str):
        return f"must be a name, got {value!r}"
    return None
