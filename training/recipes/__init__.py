"""Training recipes, found by method (a scheme name): ``recipe_for(model_name)``.

:class:`Recipe` (``base.py``) is the default every model gets; a method that trains with
its own settings has a module here defining a :class:`Recipe` subclass, listed in
:data:`RECIPES` (or added with :func:`register_recipe`, as a scheme is with
``zoo.register_scheme``).
"""

from __future__ import annotations

import dataclasses

from zoo import registry

from training.recipes.base import Recipe, is_imagenet_style
from training.recipes.bonn import BONNRecipe
from training.recipes.cbcn import CBCNRecipe
from training.recipes.rbcn import RBCNRecipe
from training.recipes.rbnn import RBNNRecipe

#: method (scheme name) → its recipe; methods not listed train with :class:`Recipe`
RECIPES: dict[str, type[Recipe]] = {"rbnn": RBNNRecipe, "bonn": BONNRecipe, "rbcn": RBCNRecipe, "cbcn": CBCNRecipe}


def register_recipe(method: str, recipe: type[Recipe]) -> None:
    """Trains the models of ``method`` (a registered scheme's name) with ``recipe``."""
    registry.get_scheme(method)  # an unknown method names the registered ones
    if not (isinstance(recipe, type) and issubclass(recipe, Recipe)):
        raise ValueError(f"The recipe of {method!r} must be a Recipe subclass, got {recipe!r}.")
    RECIPES[method] = recipe


def recipe_class(method: str) -> type[Recipe]:
    """The recipe of a method (a scheme name): its registered one, else :class:`Recipe`."""
    return RECIPES.get(method, Recipe)


def recipe_for(model_name: str, epochs: int | None = None, batch_size: int | None = None,
               method: str | None = None, **overrides) -> Recipe:
    """The recipe to train ``model_name`` with: its own method's, or ``method``'s (same-budget
    comparisons train a baseline with the compared method's settings)."""
    method = method or registry.get_model_spec(model_name).scheme.name
    recipe = recipe_class(method)
    unknown = sorted(set(overrides) - {field.name for field in dataclasses.fields(recipe)})
    if unknown:
        raise ValueError(f"{recipe.__name__} (the recipe of {method}) has no {', '.join(unknown)}.")
    return recipe.for_model(model_name, epochs, batch_size, **overrides)


__all__ = ["RECIPES", "BONNRecipe", "CBCNRecipe", "RBCNRecipe", "RBNNRecipe", "Recipe", "is_imagenet_style",
           "recipe_class", "recipe_for", "register_recipe"]
