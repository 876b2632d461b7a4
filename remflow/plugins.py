"""Plug-ins: a dataset reader or a model class from the user's own package (docs/adding-a-dataset-or-model.md).

`data.dataset: mypkg.data:load` and `model.name: mypkg.nets:MyNet` name a module importable from the environment
(an installed or `pip install -e` package) or from the current folder, and an attribute of it.

A model plug-in is built as `MyNet(in_channels=, num_classes=, image_size=, **model.options)` (only the
arguments its signature names are passed). A WidenableNet subclass (remflow/models/layers.py) takes every
method, REM included; any other torch.nn.Module takes the methods that need no expansion: remflow wraps its class
so that it answers `forward(x, route=None)` and reports no added channels, with its state-dict keys unchanged.
`plugin_checks` (run by the params loader, so by `remflow check` and every stage) refuses what cannot work.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from typing import Any

from remflow.config import ParamsBase, is_plugin
from remflow.errors import RemflowError

_SHAPE_ARGS = ("in_channels", "num_classes", "image_size")


def resolve(ref: str, key: str) -> Any:
    """Import `<module>:<attribute>`; the current folder is searched after the environment."""
    module_name, _, attr = ref.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # `remflow` as a console script does not search the current folder by itself
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise RemflowError(f"cannot import the plug-in's module '{module_name}' ({e})", key=key, got=ref,
                           hint="install its package (pip install -e PATH) or run remflow from the folder that "
                                "holds it") from None
    except Exception as e:  # the user's module failed while importing
        raise RemflowError(f"importing '{module_name}' raised {type(e).__name__}: {e}", key=key, got=ref) from None
    if not hasattr(module, attr):
        raise RemflowError(f"module '{module_name}' has no attribute '{attr}'", key=key, got=ref,
                           hint=f"defined there: {', '.join(n for n in vars(module) if not n.startswith('_'))}")
    return getattr(module, attr)


def model_class(ref: str) -> type:
    from torch import nn

    cls = resolve(ref, "model.name")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise RemflowError("a model plug-in must be a torch.nn.Module subclass", key="model.name", got=ref,
                           hint="name the class, not a function or an instance")
    return cls


def is_widenable(cls: type) -> bool:
    from remflow.models.layers import WidenableNet

    return issubclass(cls, WidenableNet)


def plugin_checks(p: ParamsBase, expansion_methods: set[str]) -> list[tuple[str, str, str]]:
    """The params loader's rules for plug-ins: (key, problem, given) rows. `expansion_methods`: the registered
    methods that widen the model (the registry's `uses_expansion`)."""
    problems: list[tuple[str, str, str]] = []
    for key, ref, check in (("data.dataset", p.data.dataset, callable), ("model.name", p.model.name, None)):
        if not is_plugin(ref):
            continue
        try:
            obj = model_class(ref) if check is None else resolve(ref, key)
        except RemflowError as e:
            problems.append((key, e.message, repr(ref)))
            continue
        if check is callable and not callable(obj):
            problems.append((key, "a dataset plug-in must be a function (called as f(root=, **data.options))",
                             repr(ref)))
        if check is None and not is_widenable(obj):
            for grid_key in ("methods", "etd_methods"):
                for i, run in enumerate(getattr(p.grid, grid_key)):
                    method = getattr(p.methods.get(run), "method", run)
                    if grid_key == "etd_methods" or method in expansion_methods:
                        problems.append((f"grid.{grid_key}.{i}", f"'{run}' ({method}) needs a model with REM's "
                                         f"expansion interface (a remflow WidenableNet); {ref} is a plain "
                                         "nn.Module (docs/adding-a-dataset-or-model.md)", repr(run)))
            if "etd" in p.grid.pretrain_variants:
                problems.append(("grid.pretrain_variants", f"ETD pretraining widens the model; {ref} is a plain "
                                 "nn.Module without the expansion interface", repr(list(p.grid.pretrain_variants))))
    return problems


def build_plugin_model(cfg: Any, in_channels: int, num_classes: int, image_size: int):
    """The plug-in model, as a WidenableNet (a plain nn.Module wrapped to answer remflow's calls)."""
    cls = model_class(cfg.name)
    target = cls if is_widenable(cls) else _plain(cls)
    try:
        accepts = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - a builtin signature
        accepts = {}
    any_kw = any(a.kind is inspect.Parameter.VAR_KEYWORD for a in accepts.values())
    shape = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    kwargs = {k: v for k, v in shape.items() if any_kw or k in accepts}
    clash = sorted(set(cfg.options) & set(_SHAPE_ARGS))
    if clash:
        raise RemflowError(f"model.options sets {', '.join(clash)}, which remflow takes from the data",
                           key="model.options", got=cfg.options)
    try:
        return target(**kwargs, **cfg.options)
    except RemflowError:
        raise
    except Exception as e:
        raise RemflowError(f"building {cfg.name} raised {type(e).__name__}: {e}", key="model.name", got=cfg.name,
                           hint=f"it is called as {cls.__name__}({', '.join(f'{k}=' for k in kwargs)}"
                                f"{', **model.options' if cfg.options else ''})") from None


@functools.cache
def _plain(cls: type) -> type:
    """`cls` with remflow's model interface on top: forward(x, route=None), no channel groups, never widened.
    A subclass, not a wrapper module, so the state dict keeps the user's keys."""
    from remflow.models.layers import WidenableNet

    def __init__(self, *args, **kwargs):
        cls.__init__(self, *args, **kwargs)
        if "added" not in self.__dict__:  # the class called nn.Module.__init__ itself, past WidenableNet's
            self.added = {}

    def forward(self, x, route=None):
        if route is not None:
            raise RemflowError(f"{cls.__qualname__} is a plain nn.Module: it has no added channels to route",
                               key="model.name", hint="REM and ETD need a WidenableNet "
                               "(docs/adding-a-dataset-or-model.md)")
        return cls.forward(self, x)

    def widen_(self, added, **kw):
        raise RemflowError(f"{cls.__qualname__} is a plain nn.Module: it cannot be widened", key="model.name",
                           hint="REM and ETD need a WidenableNet (docs/adding-a-dataset-or-model.md)")

    return type(cls.__name__, (cls, WidenableNet), {
        "__init__": __init__, "forward": forward, "widen_": widen_, "group_widths": {},
        "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
    })
