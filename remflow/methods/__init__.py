"""The method registry: one module per unlearning method, each registering itself on import.

Every module of this package is imported here (found on disk, no list to edit), so adding a method is adding
its module (and its entry under `methods:` in params.yaml). Modules without a `register(...)` call are the
shared parts (base, forgetting, importance).
"""

import importlib
import pkgutil

from remflow.methods.base import REGISTRY, Method, MethodConfig, UnlearnContext, register

def _import_all() -> None:
    """Import every method module; one that fails (a method file added to the package with a syntax error or a
    missing dependency) is named as the file it is, not as a bug of remflow's."""
    from pathlib import Path

    from remflow.errors import RemflowError

    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except RemflowError:
            raise
        except Exception as e:  # noqa: BLE001 - a method module of the user's, most likely
            where = Path(__path__[0]) / f"{module}.py"
            line = getattr(e, "lineno", None)
            raise RemflowError(f"the method module {module}.py cannot be imported ({type(e).__name__}: {e})",
                               key=f"{where}{f':{line}' if line else ''}",
                               hint="fix or remove the file: every command that runs a method or validates "
                                    "params.yaml in full imports every module of remflow/methods "
                                    "(docs/adding-a-method.md)") from None


_import_all()

__all__ = ["REGISTRY", "Method", "MethodConfig", "UnlearnContext", "register"]
