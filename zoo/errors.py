"""What the zoo raises for bad input, which its commands report in one line."""

from __future__ import annotations


def user_errors() -> tuple[type[Exception], ...]:
    """ValueError and its subclasses (unknown names, shapes, settings, weights files, budgets,
    checkpoints, conversions) and a dataset that is not prepared. Anything else is a bug and
    keeps its traceback."""
    from zoo.data import DatasetNotFoundError

    return (ValueError, DatasetNotFoundError)
