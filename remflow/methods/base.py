"""What every unlearning method gets (UnlearnContext) and how it is registered.

A method is one module: a pydantic config class (a MethodConfig with `method: Literal[name]` and the
paper's defaults) and a function `unlearn(ctx, cfg) -> model` returning the deployable model, registered
with `@register(...)`. A training-based method states its loss, the data it trains on and its selection rule
(a `Phase` and a `Selection` of remflow.train) and calls `ctx.train`, the one shared part that runs the loop,
the nested phases, the selection and the run's figures. See docs/adding-a-method.md.

A method that keeps a validation-selected checkpoint states its rule in config: its config class derives from
`SelectedConfig` (keys `select`, `eval_every`, `tie`, defaults what the released code does for it, see
docs/protocol.md) and it passes `select=ctx.by_validation(cfg)` to `ctx.train`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from pydantic import Field, PositiveInt

from remflow.config import SELECT_HELP, TIE_HELP, ParamsBase, Recipe, SelectRule, Strict, TieRule
from remflow.data.task import Task
from remflow.errors import RemflowError
from remflow.models import WidenableNet, build_model, count_params
from remflow.seeds import derive_seed
from remflow.train import (Data, Phase, Selection, accuracy, by_validation, compiled, make_optimizer, shuffled,
                           train)


class MethodConfig(Strict):
    """Base of every method's config. Recipe fields left at None take the `unlearn` section's values."""

    method: str
    optimizer: Literal["sgd", "adam"] | None = None
    lr: float | None = Field(None, gt=0)
    momentum: float | None = Field(None, ge=0, lt=1)
    weight_decay: float | None = Field(None, ge=0)
    batch_size: PositiveInt | None = None
    epochs: PositiveInt | None = None
    schedule: Literal["warmup_linear", "constant"] | None = None

    def recipe(self, budget: Recipe) -> Recipe:
        own = {k: getattr(self, k) for k in Recipe.model_fields if getattr(self, k, None) is not None}
        return Recipe(**{**budget.model_dump(include=set(Recipe.model_fields)), **own})


class SelectedConfig(MethodConfig):
    """A method that keeps a checkpoint by validation accuracy, with its rule stated in config (docs/protocol.md).
    A key left at None takes pretraining's value (`pretrain.select`, `.eval_every`, `.tie`): Retrain's default."""

    select: SelectRule | None = Field("best_val", description=SELECT_HELP + "; None: as pretraining")
    eval_every: PositiveInt | None = Field(1, description="epochs between validation checks; None: as pretraining")
    tie: TieRule | None = Field("latest", description=TIE_HELP + "; None: as pretraining")


# the rule of `ctx.by_validation()` for a method whose config states none: every epoch, the later of equal scores
DEFAULT_SELECTION = {"select": "best_val", "eval_every": 1, "tie": "latest"}


def selection_rule(cfg: object | None, pretrain: object) -> dict:
    """`select`, `eval_every` and `tie` of a method's config: its own where set, pretraining's where None, the
    remflow default where the config has no such key."""
    out = {}
    for key, default in DEFAULT_SELECTION.items():
        if cfg is not None and key in type(cfg).model_fields:
            value = getattr(cfg, key)
            out[key] = getattr(pretrain, key) if value is None else value
        else:
            out[key] = default
    return out


@dataclass
class UnlearnContext:
    model: WidenableNet  # the original model; widened only for methods that use expansion and an ETD checkpoint
    task: Task
    params: ParamsBase
    seed: int
    device: torch.device
    route: dict | None = None  # {"keep", "seed"} of an ETD checkpoint's trained memorisation channels
    stats: dict = field(default_factory=dict)  # method figures for the run record (flush epochs, steps, ...)
    peak_params: int = 0
    method_cfg: MethodConfig | None = None  # the config `recipe()` was last asked for: `by_validation()` reads it

    def __post_init__(self):
        self.note_params(self.model)

    def recipe(self, cfg: MethodConfig, budget: Recipe | None = None) -> Recipe:
        """The method's recipe: its own keys over `budget` (default: the `unlearn:` section; Retrain: `pretrain:`)."""
        self.method_cfg = cfg
        return cfg.recipe(self.params.unlearn if budget is None else budget)

    def generator(self, *stream: object) -> torch.Generator:
        return self.task.generator(derive_seed(self.seed, *stream))

    def fresh_model(self, *stream: object) -> WidenableNet:
        """A newly initialised model of the deployed architecture (seeded)."""
        torch.manual_seed(derive_seed(self.seed, "init", *stream))
        s = self.task.splits
        return build_model(self.params.model, s.in_channels, s.num_classes, s.image_size).to(self.device)

    def frozen_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def note_params(self, *models: torch.nn.Module) -> None:
        """Record the parameters held at once (trained and frozen copies together) for `params_peak`."""
        self.peak_params = max(self.peak_params, count_params(*models))

    def acc(self, model: torch.nn.Module, idx: torch.Tensor, **kw) -> float:
        return accuracy(model, self.task, idx, batch_size=self.params.runtime.eval_batch_size, **kw)

    # -- what training-based methods state, and the shared part that runs it
    def shuffled(self, indices: torch.Tensor, batch_size: int, *stream: object,
                 labels: torch.Tensor | None = None) -> Data:
        """Epochs of `indices`, reshuffled each time from their own seeded stream."""
        return shuffled(self.task, indices, batch_size, self.generator(*stream), labels)

    def by_validation(self, cfg: MethodConfig | None = None) -> Selection:
        """The checkpoint selection of a method by clean validation accuracy (never the test set), by the rule
        its config states (`select`, `eval_every`, `tie`; see SelectedConfig): `cfg`, else the config last
        given to `recipe()`; a config without those keys gets every epoch, the later of equal scores."""
        rule = selection_rule(cfg if cfg is not None else self.method_cfg, self.params.pretrain)
        return by_validation(self.task, self.params.runtime.eval_batch_size, every=rule["eval_every"],
                             tie=rule["tie"], select=rule["select"])

    def train(self, model: torch.nn.Module, recipe: Recipe, main: Phase, *, nested: tuple[Phase, ...] = (),
              select: Selection | None = None, compile: bool = False) -> torch.nn.Module:
        """Run `main` (and `nested` before each of its epochs) with the recipe's optimizer, keep the epoch
        `select` picks, and record the run's figures in `stats`. `compile`: torch.compile the main phase's
        forward when `runtime.compile` is set (plain steps only, no channel routing)."""
        opt = make_optimizer(model.parameters(), recipe)
        net = compiled(model, self.params.runtime) if compile else None
        log = train(model, opt, main, nested=nested, select=select, net=net, device=self.device)
        self.stats.update(log.stats(select))
        return model


@dataclass(frozen=True)
class Method:
    name: str
    config: type[MethodConfig]
    unlearn: Callable[[UnlearnContext, MethodConfig], torch.nn.Module]
    summary: str
    reference: str
    uses_expansion: bool = False  # receives an ETD checkpoint widened, with its memorisation channels
    ablation: bool = False  # a variant of another method for an ablation study (suites may leave it out)


REGISTRY: dict[str, Method] = {}


def _signature_text(fn) -> str:
    import inspect

    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return " (not a function)"


def register(name: str, config: type[MethodConfig], *, summary: str, reference: str, uses_expansion: bool = False,
             ablation: bool = False):
    field_ = config.model_fields.get("method")
    if field_ is None or field_.default != name:
        raise TypeError(f"{config.__name__}.method must be Literal['{name}'] with default '{name}'")

    def wrap(fn):
        import inspect

        try:
            inspect.signature(fn).bind(None, None)
        except (TypeError, ValueError):
            where = f"{fn.__module__}.{getattr(fn, '__name__', fn)}"
            raise RemflowError(f"method '{name}' is registered with a function that cannot take (ctx, cfg)",
                               key=where, got=f"{getattr(fn, '__name__', fn)}{_signature_text(fn)}",
                               hint="def unlearn(ctx: UnlearnContext, cfg: <its config>) -> nn.Module, returning "
                                    "the unlearnt model (docs/adding-a-method.md)") from None
        if name in REGISTRY:
            first = REGISTRY[name].unlearn.__module__
            raise RemflowError(f"method '{name}' is registered twice: by {first} and by {fn.__module__}",
                               key=f"{fn.__module__}.{fn.__name__}", got=name,
                               hint="a method's name is its own: register yours under another name")
        REGISTRY[name] = Method(name, config, fn, summary, reference, uses_expansion, ablation)
        return fn

    return wrap
