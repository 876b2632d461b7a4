"""The method registry: one module per unlearning method, each registering itself on import.

Every module of this package is imported here (found on disk, no list to edit), so adding a method is adding
its module (and its entry under `methods:` in params.yaml). Modules without a `register(...)` call are the
shared parts (base, forgetting, importance).
"""

import importlib
import pkgutil

from remflow.methods.base import REGISTRY, Method, MethodConfig, UnlearnContext, register

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["REGISTRY", "Method", "MethodConfig", "UnlearnContext", "register"]
