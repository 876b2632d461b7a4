"""The method registry: one module per unlearning method, each registering itself on import."""

from remflow.methods.base import REGISTRY, Method, UnlearnContext, derive_seed, register

# importing a module registers its method; the order is the order `remflow methods` lists them in
from remflow.methods import (  # noqa: E402,F401  isort: skip
    none, retrain, finetune, rem, ga, npo, neggrad_plus, scrub, bad_teacher, salun, ssd, potion,
)

__all__ = ["REGISTRY", "Method", "UnlearnContext", "derive_seed", "register"]
