"""The sections of params.yaml as pydantic models: what the library's modules take as arguments.

Defaults are the paper's CIFAR-10 / ResNet-9 setting (research/paper-rem.md §2-4); the suites' params files
override what they change. `extra="forbid"` everywhere. The `methods:` section is typed by the method registry:
remflow.params assembles the full schema (these sections + every registered method's config) and loads it,
so nothing here imports the methods and the methods never import remflow.params.

No key is named `size` or `nfiles` at any depth: DVC's run cache drops such keys from the hash it looks runs
up by (treeverse/dvc#10296), so a changed `size` would restore the outputs of the old value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)

from remflow.errors import RemflowError

__all__ = [
    "Regularity",
    "REGULARITIES",
    "CORRUPTION_OF",
    "DATASETS",
    "GENERIC_DATASETS",
    "PLUGIN_REF",
    "is_plugin",
    "ModelCfg",
    "RUN_NAME",
    "Strict",
    "CrossError",
    "AugmentCfg",
    "DataCfg",
    "BackdoorCfg",
    "InterclassCfg",
    "RandomLabelsCfg",
    "CorruptionCfg",
    "CnnCfg",
    "ResNet9Cfg",
    "ViTCfg",
    "PluginModelCfg",
    "PLUGIN_MODEL_TAG",
    "Recipe",
    "SelectRule",
    "TieRule",
    "EtdCfg",
    "PretrainCfg",
    "UnlearnCfg",
    "GridCfg",
    "RuntimeCfg",
    "EvaluateCfg",
    "ParamsBase",
]


Regularity = Literal["high", "medium", "low"]
REGULARITIES: tuple[str, ...] = ("high", "medium", "low")
CORRUPTION_OF = {"high": "backdoor", "medium": "interclass", "low": "random_labels"}
DATASETS = ("digits", "fashion_mnist", "cifar10", "svhn")
GENERIC_DATASETS = ("folder", "npz")  # the user's own data: an image tree or arrays (remflow/data/custom.py)
# a plug-in from the user's own package: `data.dataset: mypkg.data:load`, `model.name: mypkg.nets:MyNet`
PLUGIN_REF = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def is_plugin(name: object) -> bool:
    return isinstance(name, str) and PLUGIN_REF.match(name) is not None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_bool(v):
    """YAML's true/false is no number: pydantic alone would read `count: true` as 1 and a rate `true` as 1.0."""
    if isinstance(v, bool):
        raise ValueError("a number is expected here, not true or false")
    return v


NoBool = BeforeValidator(_no_bool)


class CrossError(ValueError):
    """A rule that involves a key path of its own (or several keys): reported under `key`, not pydantic's loc."""

    def __init__(self, key: str, got: object, message: str):
        super().__init__(message)
        self.key, self.got, self.message = key, got, message


DVC_IGNORED_KEYS = ("size", "nfiles")


def _refuse_dvc_ignored_keys(data: Any, path: tuple[str, ...] = ()) -> None:
    """No key named `size` or `nfiles` at any depth, the names users choose included (a run under `methods:`,
    a plug-in's `options`, a detection spec): DVC's run cache leaves such keys out of the hash it looks runs up
    by (treeverse/dvc#10296), so a changed value would restore the outputs of the old one."""
    if isinstance(data, dict):
        for k, v in data.items():
            here = (*path, str(k))
            if k in DVC_IGNORED_KEYS and here != ("corruption", "size"):  # that one has its own message
                raise CrossError(".".join(here), v if not isinstance(v, (dict, list)) else str(k),
                                 f"no params key may be named `{k}`: DVC's run cache leaves keys named `size` or "
                                 "`nfiles` out of the hash it looks runs up by (treeverse/dvc#10296) and would "
                                 "restore a stale output; rename it")
            _refuse_dvc_ignored_keys(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _refuse_dvc_ignored_keys(v, (*path, str(i)))


# a run name becomes a folder name, part of DVC stage names (`unlearn@<run>-high-0.1-0`) and a params path
# (`methods.<run>`): letters, digits, `_` and `-` only, starting with a letter
RUN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


# ---------------------------------------------------------------- data and corruption


class AugmentCfg(Strict):
    """Training augmentation, applied in batches on the device (paper: crop 32 pad 4 + horizontal flip)."""

    crop_padding: NonNegativeInt = 4
    flip: bool = True


class DataCfg(Strict):
    dataset: str = Field("cifar10", description="digits | fashion_mnist | cifar10 | svhn | folder (an image tree) | "
                         "npz (arrays) | <module>:<function> (a plug-in reader); docs/adding-a-dataset-or-model.md")
    root: str | None = Field(None, description="folder with the dataset files (default: per dataset); folder: the "
                             "tree holding train/ and test/; npz: the .npz file")
    download: bool = Field(False, description="cifar10/svhn/fashion_mnist: download when files are missing")
    val_fraction: float = Field(0.02, gt=0, lt=0.5, description="held out of the training set for model selection")
    test_fraction: float = Field(0.2, gt=0, lt=0.9, description="digits only: share held out as the test set")
    train_size: PositiveInt | None = Field(None, description="keep a seeded subset of the training set")
    test_size: PositiveInt | None = Field(None, description="keep a seeded subset of the test set")
    split_seed: NonNegativeInt = 0
    augment: AugmentCfg = AugmentCfg()
    resize: PositiveInt | None = Field(None, description="folder: resize every image to resize x resize pixels; "
                                       "unset: images must all have one square size (others are refused)")
    pad_to: PositiveInt | None = Field(None, description="pad every image with zeros, centred, to pad_to x pad_to "
                                       "pixels (Fashion-MNIST's 28 to 32: the paper's ResNet-9 at CIFAR's size); "
                                       "unset: as read")
    options: dict[str, Any] = Field({}, description="a plug-in reader's keyword arguments")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v):
        if v in DATASETS or v in GENERIC_DATASETS or is_plugin(v):
            return v
        raise ValueError(f"unknown dataset; known: {', '.join(DATASETS + GENERIC_DATASETS)}, or a plug-in reader "
                         "written <module>:<function>")

    @model_validator(mode="after")
    def _own_data_keys(self):
        if self.resize is not None and self.dataset != "folder":
            raise CrossError("data.resize", self.resize, "only the folder reader resizes images (data.dataset: folder)")
        if self.options and not is_plugin(self.dataset):
            raise CrossError("data.options", self.options, "options are passed to a plug-in reader only "
                             "(data.dataset: <module>:<function>)")
        if self.dataset in GENERIC_DATASETS and not self.root:
            raise CrossError("data.root", self.root, f"data.dataset: {self.dataset} reads data.root (the "
                             + ("folder holding train/ and test/" if self.dataset == "folder" else ".npz file")
                             + "); set it")
        return self


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


class RandomLabelsCfg(Strict):
    """Low regularity: |D_c| uniform indices get a new label drawn uniformly over all classes, as the released
    code draws them, so about 1/num_classes keep their true label; `always_wrong` draws over the other classes."""

    always_wrong: bool = Field(False, description="draw the new label over the other classes only (remflow's "
                               "earlier rule), not over all classes (the released code: ~1/num_classes unchanged)")


class CorruptionCfg(Strict):
    count: Annotated[PositiveInt | float, NoBool] = Field(1000, description="|D_c|: a count, or a fraction of the training set")
    backdoor: BackdoorCfg = BackdoorCfg()
    interclass: InterclassCfg = InterclassCfg()
    random_labels: RandomLabelsCfg = RandomLabelsCfg()

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # `size` was this key's old name; DVC's run cache ignores keys named `size` (treeverse/dvc#10296)
        if isinstance(data, dict) and "size" in data:
            raise CrossError("corruption.size", data["size"],
                             "renamed to `corruption.count` (DVC's run cache ignores keys named `size`, "
                             "treeverse/dvc#10296, and would restore the corrupted set of the old size)")
        return data

    @field_validator("count")
    @classmethod
    def _count(cls, v):
        if v <= 0:
            raise ValueError("|D_c| must hold at least one sample: a count of 1 or more, or a fraction in (0, 1)")
        if isinstance(v, float) and not (0.0 < v < 1.0):
            raise ValueError("a fraction must lie in (0, 1); write a count as an integer (1000, not 1000.0)")
        return v


# ---------------------------------------------------------------- models


class CnnCfg(Strict):
    """Small residual CNN for 8x8 and 28x28 inputs."""

    name: Literal["cnn"]
    width: PositiveInt = 16
    # the paper defines the released layout for ResNet-9 only; on this small CNN its analogue (`released`) is a
    # switch: on the digits fixtures it left SSD 12 points of utility down and SCRUB / Bad Teacher healing less
    # (seed 0), not yet re-tuned, so the CNN keeps every-conv masking by default
    layout: Literal["released", "every_conv"] = Field(
        "every_conv", description="where channels are added and masked: released = block outputs only (the "
        "residual block's inner convs unmasked at full width); every_conv = every conv output")


class ResNet9Cfg(Strict):
    """The paper's ResNet-9 (Goel et al. variant); width 32 is the paper's capacity-0.5 model, 64 the full one."""

    name: Literal["resnet9"]
    width: PositiveInt = 32
    layout: Literal["released", "every_conv"] = Field(
        "released", description="where channels are added and masked: released = the released code's four mask "
        "pairs (block outputs; residual inner convs unmasked at full width); every_conv = every conv output")


class ViTCfg(Strict):
    """ViT for small datasets (shifted patch tokenization + locality self-attention), paper §2.2."""

    name: Literal["vit"]
    patch: PositiveInt = 8
    dim: PositiveInt = 512
    depth: PositiveInt = 4
    heads: PositiveInt = 4
    dim_head: PositiveInt = 64
    mlp_dim: PositiveInt = 768


class PluginModelCfg(Strict):
    """A model class from the user's own package (docs/adding-a-dataset-or-model.md): built as
    `Class(in_channels=, num_classes=, image_size=, **options)`. REM and its variants need a WidenableNet (the
    expansion interface of remflow/models/layers.py); every other method takes any torch.nn.Module."""

    name: str = Field(pattern=PLUGIN_REF.pattern, description="<module>:<Class>, importable from the environment "
                      "or the current folder")
    options: dict[str, Any] = Field({}, description="keyword arguments of the class besides the data's shape")


PLUGIN_MODEL_TAG = "<module>:<Class>"  # the plug-in's tag in the union (shown in `unknown model; known: ...`)


def _model_tag(v: Any) -> str | None:
    name = v.get("name") if isinstance(v, dict) else getattr(v, "name", None)
    return PLUGIN_MODEL_TAG if is_plugin(name) else name


ModelCfg = Annotated[
    Union[Annotated[CnnCfg, Tag("cnn")], Annotated[ResNet9Cfg, Tag("resnet9")], Annotated[ViTCfg, Tag("vit")],
          Annotated[PluginModelCfg, Tag(PLUGIN_MODEL_TAG)]],
    Discriminator(_model_tag),
]


# ---------------------------------------------------------------- training recipes


class Recipe(Strict):
    """One optimisation recipe: what `remflow.train` needs to run a loop."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, NoBool] = Field(gt=0, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: PositiveInt = 512
    epochs: PositiveInt
    schedule: Literal["warmup_linear", "constant"]


class EtdCfg(Strict):
    """Example-tied dropout pretraining (Maini et al. 2023 as used by REM): memorisation channels per sample."""

    ratio: float = Field(1.0, gt=0, le=4, description="memorisation channels per deployed channel")
    keep: float = Field(0.2, gt=0, lt=1, description="per-sample keep probability of a memorisation channel")
    masks: Literal["nested", "per_layer"] = Field(
        "nested", description="nested: a sample's mask comes from its id alone, shared by layers of equal width "
        "(the released code); per_layer: salted by the layer")


# ---------------------------------------------------------------- checkpoint selection (docs/protocol.md)

SelectRule = Literal["best_val", "last"]
TieRule = Literal["earliest", "latest"]
SELECT_HELP = ("checkpoint kept: best_val = the best validation accuracy, checked every `eval_every` epochs and "
               "after the last (the released code: the best test accuracy); last = the last epoch")
TIE_HELP = ("of equal validation accuracies: latest = the later epoch wins, earliest = a later epoch must score "
            "strictly higher")


class PretrainCfg(Recipe):
    """Training the original (corrupted) model; paper: SGD lr 0.025, batch 512, 4000 steps (~41 epochs).
    Selection as the released code: checked every 5 epochs (on test accuracy there, on the validation split
    here); Retrain is trained and selected alike (methods/retrain.py, docs/protocol.md)."""

    lr: Annotated[float, NoBool] = Field(0.025, gt=0, allow_inf_nan=False)
    epochs: PositiveInt = 41
    schedule: Literal["warmup_linear", "constant"] = "warmup_linear"
    eval_every: PositiveInt = Field(5, description="epochs between validation checks (best checkpoint kept)")
    select: SelectRule = Field("best_val", description=SELECT_HELP + "; last suits a validation split too "
                               "small to tell the epochs apart")
    tie: TieRule = Field("latest", description=TIE_HELP + " (the released code compares strictly on 10,000 test "
                         "images, where ties are rare and the later checkpoints of the decaying rate score higher)")
    etd: EtdCfg = EtdCfg()


class UnlearnCfg(Recipe):
    """The unlearning budget every method starts from (paper §4: lr 0.005, 980 steps = 10 epochs, batch 512)."""

    lr: Annotated[float, NoBool] = Field(0.005, gt=0, allow_inf_nan=False)
    epochs: PositiveInt = 10
    schedule: Literal["warmup_linear", "constant"] = "constant"


# ---------------------------------------------------------------- the grid and the rest


class GridCfg(Strict):
    """The taxonomy cells: dvc.yaml's matrix stages read these lists."""

    regularities: list[Regularity] = list(REGULARITIES)
    discovery_rates: list[Annotated[float, NoBool, Field(gt=0, le=1, allow_inf_nan=False)]] = [
        round(0.1 * i, 1) for i in range(1, 11)
    ]
    seeds: list[Annotated[NonNegativeInt, NoBool]] = [0, 1, 2]
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
                raise CrossError("grid.pretrain_variants", self.pretrain_variants,
                                 f"must include '{variant}' to run {', '.join(runs)} "
                                 f"(grid.{'etd_methods' if variant == 'etd' else 'methods'})")
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
    taxonomy_run: str | None = Field(None, description="run of the taxonomy tables (default: the first)")
    reference: str | None = Field(None, description="run every other run is compared with, paired over the same "
                                  "cells and seeds (default: rem, else the first run)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "taxonomy_method" in data:
            raise CrossError("evaluate.taxonomy_method", data["taxonomy_method"],
                             "renamed to `evaluate.taxonomy_run` (a run is a named entry under `methods:`; a "
                             "method is the registered algorithm it runs)")
        return data


# ---------------------------------------------------------------- robustness (remflow/robustness.py)


class ProbeCfg(Strict):
    """The linear probe on penultimate features."""

    reference: PositiveInt = Field(
        1000, description="clean training samples outside D_c in the probe's training set (fewer when the set is "
        "smaller): the contrast that makes decoding the corrupted label mean something")
    c: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regression (sklearn's C), on "
                     "standardised features")
    max_iter: PositiveInt = 500


class RobustnessCfg(Strict):
    """Relearning attacks, a feature probe and the weight distance, measured for every unlearning run.

    Defaults and why:
    - budget 0.1 of pretraining's steps: a routine fine-tune is much shorter than training; a tenth is about 4
      epochs of the paper's CIFAR-10 pretraining (400 of 4000 steps) and of the default digits suite (84 of 840),
      in the range of Siddiqui et al.'s (2025) relearning runs, and costs about what one unlearning run does.
    - lr_share 0.1 of pretraining's learning rate: half the unlearning rate in both reference suites (digits:
      0.05 -> 0.005, unlearning 0.01; the paper's CIFAR-10: 0.025 -> 0.0025, unlearning 0.005). Siddiqui et al.
      relearn at 1e-5 with no weight decay; remflow's recipes are SGD with momentum 0.9 at rates far above
      theirs, so "small" is stated relative to the suite. On digits a Retrain model's Healed and Utility do not
      move under it (0.92, 0.99), while a backdoor suppressed only at the head comes back (Healed 0.9 ->
      about 0.45); at 0.02 the same head-only model came back only partly (0.56), at 0.5 Retrain's Utility fell
      to 0.92 (the attack itself started to damage the model).
    - weight_decay 0 (Siddiqui et al.): the attack should not shrink weights towards zero, which would erase
      dormant corruption as a side effect and flatter every method.
    - batch_size: pretraining's when unset, so `budget` is also the share of pretraining's samples seen.
    - k 8 samples of D_f in every batch: few enough that memorising them alone does not move Healed on the rest
      of D_c by much, many enough for a regular corruption (a trigger) to be relearnt from them.
    - margin 0.1: "back" means within 10 points of the original model's Healed.
    - checks 20: the few-shot attack's resolution is a twentieth of its budget.
    """

    enabled: bool = Field(True, description="measure robustness in every unlearning run (off: no columns)")
    budget: float = Field(0.1, gt=0, le=1, description="attack steps as a share of pretraining's optimizer steps")
    lr_share: float = Field(0.1, gt=0, le=1, description="attack learning rate as a share of pretraining's")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: NonNegativeFloat = 0.0
    batch_size: PositiveInt | None = Field(None, description="attack batch size (default: pretraining's)")
    k: PositiveInt = Field(8, description="samples of D_f added to every batch of the few-shot attack")
    margin: float = Field(0.1, ge=0, le=1, description="few-shot: back when Healed <= original's Healed + margin")
    checks: PositiveInt = Field(20, description="few-shot: Healed checks over the budget")
    probe: ProbeCfg = ProbeCfg()


class ParamsBase(Strict):
    data: DataCfg = DataCfg()
    corruption: CorruptionCfg = CorruptionCfg()
    model: ModelCfg = ResNet9Cfg(name="resnet9")
    pretrain: PretrainCfg = PretrainCfg()
    unlearn: UnlearnCfg = UnlearnCfg()
    grid: GridCfg = GridCfg()
    methods: dict[str, Any] = {}  # typed by the method registry: remflow.params.schema()
    runtime: RuntimeCfg = RuntimeCfg()
    evaluate: EvaluateCfg = EvaluateCfg()
    robustness: RobustnessCfg = RobustnessCfg()

    @model_validator(mode="before")
    @classmethod
    def _method_names(cls, data: Any) -> Any:
        """A `methods` entry without a `method:` field runs the registered method of the same name."""
        _refuse_dvc_ignored_keys(data)
        if isinstance(data, dict) and isinstance(data.get("methods"), dict):
            entries = {}
            for name, entry in data["methods"].items():
                if not isinstance(name, str) or not RUN_NAME.match(name):
                    raise CrossError(f"methods.{name}", name, "a run name may hold letters, digits, `_` and `-` "
                                     "only, start with a letter and have at most 64 characters (it names "
                                     "folders, DVC stages and params paths)")
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
                    raise CrossError(
                        f"grid.{key}.{i}", name,
                        f"'{name}' has no entry under `methods:` (add `{name}: {{}}` to run it with its defaults)",
                    )
        names = list(self.grid.methods) + [f"{m}_etd" for m in self.grid.etd_methods]
        for key in ("taxonomy_run", "reference"):
            value = getattr(self.evaluate, key)
            if value is not None and names and value not in names:  # no run at all: check names grid.methods
                fallback = "rem" if "rem" in names else names[0]
                raise CrossError(f"evaluate.{key}", value, f"not among the grid's runs: {', '.join(names)} (name one "
                                 f"of them, or write `{key}: null` for {fallback})")
        return self

    # -- helpers used by the commands
    def method(self, name: str) -> Any:
        if name not in self.methods:
            raise RemflowError(f"no method named '{name}' under `methods:`", key=f"methods.{name}", got=name,
                               hint=f"defined: {', '.join(self.methods) or '(none)'}")
        return self.methods[name]



