"""Curate raw videos into a hub-native dataset by a recipe (``medvideocap build``).

``build(src, out, recipe="demo")`` runs the recipe's stages (see :mod:`medvideocap.build.stages`)
with the chosen engine and writes through :class:`medvideocap.dataset.writer.DatasetWriter`."""

from medvideocap.build.builder import BuildError, BuildResult, build, check_requirements, funnel
from medvideocap.build.pipeline import Outcome, Pipeline, discover
from medvideocap.build.recipe import Recipe, RecipeError, load_recipe
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import MissingDependencyError

__all__ = [
    "BuildError",
    "BuildResult",
    "MissingDependencyError",
    "Outcome",
    "Pipeline",
    "Recipe",
    "RecipeError",
    "Reject",
    "Sample",
    "build",
    "check_requirements",
    "discover",
    "funnel",
    "load_recipe",
]
