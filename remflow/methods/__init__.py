"""The method registry: one module per unlearning method, each registering itself on import."""

from remflow.methods.base import REGISTRY, Method, UnlearnContext, derive_seed, register

# importing a module registers its method; the order is the order `remflow methods` lists them in
from remflow.methods import none, retrain, finetune, rem  # noqa: E402,F401  isort: skip

__all__ = ["REGISTRY", "Method", "UnlearnContext", "derive_seed", "register"]
