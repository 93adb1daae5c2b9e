"""Reference architectures (plain torch) and recipes that make example pruned checkpoints from them."""

from sparsecut.models.recipes import RECIPES, Recipe, make_pruned_model, save_state_dict
from sparsecut.models.registry import ARCHITECTURES, Architecture, build_model, get_architecture

__all__ = [
    "ARCHITECTURES",
    "RECIPES",
    "Architecture",
    "Recipe",
    "build_model",
    "get_architecture",
    "make_pruned_model",
    "save_state_dict",
]
