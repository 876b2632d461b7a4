"""The schema of params.yaml and the one loader every command uses.

`params.yaml` is read the way DVC reads it (YAML 1.2 via ruamel: `1e-3` is a float, `yes` a string) and
validated by one pydantic model with `extra="forbid"` everywhere. Defaults are the paper's CIFAR-10 /
ResNet-9 setting (research/paper-rem.md §2-4); the suites' params files override what they change.

The `methods` section is a map from a run name to a method config. The config classes come from the
method registry, so the schema is assembled once the registry is imported (`schema()`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from remflow.errors import RemflowError

Regularity = Literal["high", "medium", "low"]
REGULARITIES: tuple[str, ...] = ("high", "medium", "low")
CORRUPTION_OF = {"high": "backdoor", "medium": "interclass", "low": "random_labels"}
DATASETS = ("digits", "fashion_mnist", "cifar10", "svhn")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- data and corruption


class AugmentCfg(Strict):
    """Training augmentation, applied in batches on the device (paper: crop 32 pad 4 + horizontal flip)."""

    crop_padding: NonNegativeInt = 4
    flip: bool = True


class DataCfg(Strict):
    dataset: Literal["digits", "fashion_mnist", "cifar10", "svhn"] = "cifar10"
    root: str | None = Field(None, description="folder with the dataset files (default: per dataset)")
    download: bool = Field(False, description="cifar10/svhn/fashion_mnist: download when files are missing")
    val_fraction: float = Field(0.02, gt=0, lt=0.5, description="held out of the training set for model selection")
    test_fraction: float = Field(0.2, gt=0, lt=0.9, description="digits only: share held out as the test set")
    train_size: PositiveInt | None = Field(None, description="keep a seeded subset of the training set")
    test_size: PositiveInt | None = Field(None, description="keep a seeded subset of the test set")
    split_seed: NonNegativeInt = 0
    augment: AugmentCfg = AugmentCfg()


class BackdoorCfg(Strict):
    """High regularity: a square trigger in the bottom-right corner, relabelled to `target`."""

    target: NonNegativeInt = 0
    patch: PositiveInt = 3
    value: Literal["max"] | float = Field("max", description="'max' = the largest value of the normalised data")


class InterclassCfg(Strict):
    """Medium regularity: the first n/2 training samples of each class are relabelled to the other."""

    classes: tuple[NonNegativeInt, NonNegativeInt] = (3, 5)

    @field_validator("classes")
    @classmethod
    def _distinct(cls, v):
        if v[0] == v[1]:
            raise ValueError("the two classes must differ")
        return v


class CorruptionCfg(Strict):
    size: PositiveInt | float = Field(1000, description="|D_c|: a count, or a fraction of the training set")
    backdoor: BackdoorCfg = BackdoorCfg()
    interclass: InterclassCfg = InterclassCfg()

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        if isinstance(v, float) and not (0.0 < v < 1.0):
            raise ValueError("a fraction must lie in (0, 1); write a count as an integer (1000, not 1000.0)")
        return v


# ---------------------------------------------------------------- models


class CnnCfg(Strict):
    """Small residual CNN for 8x8 and 28x28 inputs."""

    name: Literal["cnn"]
    width: PositiveInt = 16


class ResNet9Cfg(Strict):
    """The paper's ResNet-9 (Goel et al. variant); width 32 is the paper's capacity-0.5 model, 64 the full one."""

    name: Literal["resnet9"]
    width: PositiveInt = 32


class ViTCfg(Strict):
    """ViT for small datasets (shifted patch tokenization + locality self-attention), paper §2.2."""

    name: Literal["vit"]
    patch: PositiveInt = 8
    dim: PositiveInt = 512
    depth: PositiveInt = 4
    heads: PositiveInt = 4
    dim_head: PositiveInt = 64
    mlp_dim: PositiveInt = 768


ModelCfg = Annotated[Union[CnnCfg, ResNet9Cfg, ViTCfg], Field(discriminator="name")]


# ---------------------------------------------------------------- training recipes


class Recipe(Strict):
    """One optimisation recipe: what `remflow.train` needs to run a loop."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: PositiveInt = 512
    epochs: PositiveInt
    schedule: Literal["warmup_linear", "constant"]


class EtdCfg(Strict):
    """Example-tied dropout pretraining (Maini et al. 2023 as used by REM): memorisation channels per sample."""

    ratio: float = Field(1.0, gt=0, le=4, description="memorisation channels per deployed channel")
    keep: float = Field(0.2, gt=0, lt=1, description="per-sample keep probability of a memorisation channel")


class PretrainCfg(Recipe):
    """Training the original (corrupted) model; paper: SGD lr 0.025, batch 512, 4000 steps (~41 epochs)."""

    lr: float = Field(0.025, gt=0)
    epochs: PositiveInt = 41
    schedule: Literal["warmup_linear", "constant"] = "warmup_linear"
    eval_every: PositiveInt = Field(5, description="epochs between validation checks (best checkpoint kept)")
    etd: EtdCfg = EtdCfg()


class UnlearnCfg(Recipe):
    """The unlearning budget every method starts from (paper §4: lr 0.005, 980 steps = 10 epochs, batch 512)."""

    lr: float = Field(0.005, gt=0)
    epochs: PositiveInt = 10
    schedule: Literal["warmup_linear", "constant"] = "constant"


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


# ---------------------------------------------------------------- the grid and the rest


class GridCfg(Strict):
    """The taxonomy cells: dvc.yaml's matrix stages read these lists."""

    regularities: list[Regularity] = list(REGULARITIES)
    discovery_rates: list[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]] = [
        round(0.1 * i, 1) for i in range(1, 11)
    ]
    seeds: list[NonNegativeInt] = [0, 1, 2]
    methods: list[str] = Field([], description="run names (entries of `methods:`) run on the standard model")
    etd_methods: list[str] = Field([], description="run names also run on the ETD-pretrained model ('X (ETD)')")
    pretrain_variants: list[Literal["standard", "etd"]] = Field(
        ["standard"], description="original models to train: standard, and etd when etd_methods is not empty"
    )

    @field_validator("regularities", "discovery_rates", "seeds", "methods", "etd_methods", "pretrain_variants")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("values must be unique")
        return v

    @field_validator("regularities", "discovery_rates", "seeds")
    @classmethod
    def _nonempty(cls, v):
        if not v:
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _variants(self):
        for runs, variant in ((self.methods, "standard"), (self.etd_methods, "etd")):
            if runs and variant not in self.pretrain_variants:
                raise ValueError(f"pretrain_variants must include '{variant}' to run {', '.join(runs)}")
        return self


class RuntimeCfg(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: PositiveInt | None = Field(None, description="CPU threads (default: torch's choice)")
    compile: bool = Field(False, description="torch.compile the training step (CUDA)")
    eval_batch_size: PositiveInt = 2048
    # `remflow run` only (no stage reads them, so dvc.yaml does not track them): resources per run
    cpus: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="CPUs per run for `remflow run` (default: threads, else 1)")
    gpus: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        0, description="GPUs per run for `remflow run`; a fraction shares one card (0.25: four runs a GPU)")
    workers: PositiveInt | None = Field(None, description="parallel runs (default: as many as the resources allow)")

    @field_validator("gpus")
    @classmethod
    def _whole_or_fraction(cls, v):
        if v > 1 and v != int(v):
            raise ValueError("more than one GPU per run must be a whole number")
        return v


class EvaluateCfg(Strict):
    taxonomy_method: str | None = Field(None, description="method of the taxonomy table (default: the first)")


class ParamsBase(Strict):
    data: DataCfg = DataCfg()
    corruption: CorruptionCfg = CorruptionCfg()
    model: ModelCfg = ResNet9Cfg(name="resnet9")
    pretrain: PretrainCfg = PretrainCfg()
    unlearn: UnlearnCfg = UnlearnCfg()
    grid: GridCfg = GridCfg()
    methods: dict[str, MethodConfig] = {}
    runtime: RuntimeCfg = RuntimeCfg()
    evaluate: EvaluateCfg = EvaluateCfg()

    @model_validator(mode="before")
    @classmethod
    def _method_names(cls, data: Any) -> Any:
        """A `methods` entry without a `method:` field runs the registered method of the same name."""
        if isinstance(data, dict) and isinstance(data.get("methods"), dict):
            entries = {}
            for name, entry in data["methods"].items():
                if entry is None:
                    entry = {}
                if isinstance(entry, dict) and "method" not in entry:
                    entry = {**entry, "method": name}
                entries[name] = entry
            data = {**data, "methods": entries}
        return data

    @model_validator(mode="after")
    def _cross(self):
        for key in ("methods", "etd_methods"):
            for i, name in enumerate(getattr(self.grid, key)):
                if name not in self.methods:
                    raise _CrossError(
                        f"grid.{key}.{i}", name,
                        f"'{name}' has no entry under `methods:` (add `{name}: {{}}` to run it with its defaults)",
                    )
        if self.evaluate.taxonomy_method is not None:
            names = list(self.grid.methods) + [f"{m}_etd" for m in self.grid.etd_methods]
            if self.evaluate.taxonomy_method not in names:
                raise _CrossError("evaluate.taxonomy_method", self.evaluate.taxonomy_method,
                                  f"not among the grid's runs: {', '.join(names)}")
        return self

    # -- helpers used by the commands
    def method(self, name: str) -> MethodConfig:
        if name not in self.methods:
            raise RemflowError(f"no method named '{name}' under `methods:`", key=f"methods.{name}", got=name,
                               hint=f"defined: {', '.join(self.methods) or '(none)'}")
        return self.methods[name]


class _CrossError(ValueError):
    def __init__(self, key: str, got: object, message: str):
        super().__init__(message)
        self.key, self.got, self.message = key, got, message


# Params is ParamsBase with `methods` typed as the registry's discriminated union (built by schema()).
Params = ParamsBase


@functools.cache
def schema() -> type[ParamsBase]:
    from remflow.methods import REGISTRY

    configs = tuple(m.config for m in REGISTRY.values())
    entry = Annotated[Union[configs], Field(discriminator="method")]  # type: ignore[valid-type]
    return create_model("Params", __base__=ParamsBase, methods=(dict[str, entry], {}))


# ---------------------------------------------------------------- loading and error reporting


class ParamsError(RemflowError):
    """Invalid params: `problems` holds (key path, what is wrong, what was given) rows."""

    def __init__(self, path: str, problems: list[tuple[str, str, str]]):
        key, problem, got = problems[0]
        super().__init__(f"invalid parameters in {path}", key=key, got=got)
        self.path = path
        self.problems = problems


def read_yaml(path: str | Path) -> Any:
    """Parse YAML as DVC does (YAML 1.2, safe loader)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    if not path.is_file():
        raise RemflowError("params file not found", key=str(path), hint="pass --params PATH or run from the repo root")
    try:
        return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except YAMLError as e:
        raise RemflowError(f"not valid YAML: {str(e).splitlines()[0]}", key=str(path)) from None


def validate(raw: Any, path: str = "params.yaml") -> ParamsBase:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(path, [("(top level)", "params must be a mapping of sections", _short(raw))])
    try:
        return schema().model_validate(raw)
    except ValidationError as e:
        raise ParamsError(path, [_describe(err) for err in e.errors()]) from None


def load_params(path: str | Path = "params.yaml") -> ParamsBase:
    return validate(read_yaml(path), str(path))


def _describe(err: dict) -> tuple[str, str, str]:
    loc = [str(p) for p in err.get("loc", ())]
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _CrossError):
        return ctx_err.key, ctx_err.message, _short(ctx_err.got)
    # drop pydantic's union-tag segments (e.g. "rem" inside methods.rem.rem.beta, "cnn" in model.cnn.width)
    cleaned = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] in ("model",) and part in ("cnn", "resnet9", "vit"):
            continue
        if i > 1 and loc[i - 2] == "methods" and _is_method_tag(part):
            continue
        cleaned.append(part)
    key = ".".join(cleaned) or "(top level)"
    kind, msg = err.get("type", ""), err.get("msg", "")
    if kind == "extra_forbidden":
        msg = "unknown key (a typo?)"
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        msg = f"unknown {'model' if cleaned[:1] == ['model'] else 'method'}; known: {ctx.get('expected_tags', '')}"
        return key, msg, _short(ctx.get("tag"))
    elif kind in ("less_than_equal", "greater_than") and cleaned[:2] == ["grid", "discovery_rates"]:
        msg = "a discovery rate must lie in (0, 1]"
    elif kind == "missing":
        msg = "required key is missing"
    return key, msg.removeprefix("Value error, "), _short(err.get("input"))


def _is_method_tag(part: str) -> bool:
    try:
        from remflow.methods import REGISTRY
    except Exception:  # pragma: no cover
        return False
    return part in REGISTRY


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
