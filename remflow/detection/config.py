"""The `detection:` section of params.yaml: the study's corruption cells, detectors, budgets and runs.

Like every section it rejects unknown keys; remflow.params includes it in the schema.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator

from remflow.config import RUN_NAME, Strict

Kind = Literal["backdoor", "blend", "interclass", "random_labels", "confusion"]
DETECTORS = ("loss", "cross_val", "spectral")
# the regularity family each kind is scored as (metrics.py): which Utility, which test-time face
FAMILY = {"backdoor": "high", "blend": "high", "interclass": "medium", "random_labels": "low", "confusion": "low"}
# the detector a kind gets when its spec names none: features for a trigger, held-out confidence for labels
DEFAULT_DETECTOR = {"backdoor": "spectral", "blend": "spectral", "interclass": "cross_val",
                    "random_labels": "cross_val", "confusion": "cross_val"}


class _Spec(Strict):
    detector: Literal["loss", "cross_val", "spectral"] | None = Field(
        None, description="the detector run on this corruption (default: spectral for a trigger, cross_val else)")


class BackdoorSpec(_Spec):
    """A trigger relabelled to corruption.backdoor.target, |D_c| = corruption.count; patch and value override
    corruption.backdoor's, and `scale` dims it (a faint trigger: 0.5 of the value)."""

    kind: Literal["backdoor"]
    patch: PositiveInt | None = None
    value: Literal["max"] | float | None = None
    scale: float = Field(1.0, gt=0, le=1, description="multiplies the trigger's value")


class BlendSpec(_Spec):
    """A blended trigger (Chen et al. 2017): the whole image mixed with a fixed noise pattern,
    x' = (1 - alpha) x + alpha P, on corruption.count samples relabelled to corruption.backdoor.target (the
    named backdoor's samples and labels, another trigger). Smaller alpha: a fainter, less regular trigger."""

    kind: Literal["blend"]
    alpha: float = Field(0.2, gt=0, le=1, description="the pattern's weight in the blend")


class InterclassSpec(_Spec):
    """corruption.interclass's two classes swap labels on `fraction` of each class's training samples (the
    first ones, as the named corruption); unset: corruption.count / 2 samples a class."""

    kind: Literal["interclass"]
    fraction: float | None = Field(None, gt=0, le=1)


class RandomLabelsSpec(_Spec):
    """corruption.count uniform samples get a uniformly drawn wrong label (the named `low` corruption)."""

    kind: Literal["random_labels"]


class ConfusionSpec(_Spec):
    """corruption.count uniform samples get a wrong label drawn from a class confusion matrix: with probability
    `focus` the class's most confusable class (nearest class mean image), else a uniform wrong class.
    focus = 1/(classes - 1) is random labels; focus = 1 a fixed many-class swap."""

    kind: Literal["confusion"]
    focus: float = Field(0.8, ge=0, le=1)


Spec = Annotated[Union[BackdoorSpec, BlendSpec, InterclassSpec, RandomLabelsSpec, ConfusionSpec],
                 Field(discriminator="kind")]


class DetectorsCfg(Strict):
    folds: PositiveInt = Field(5, ge=2, description="cross_val: folds of the held-out probabilities")
    max_iter: PositiveInt = Field(300, description="cross_val: iterations of each fold's logistic regression")


class DetectionCfg(Strict):
    """Cells: corruption x budget x seed (grid.seeds); each run of `methods` on each cell, twice: on the flagged
    set (`found`) and on its true positives alone (`hits`), so the pair measures what false positives cost."""

    corruptions: list[str] = Field([], description="the study's corruption cells: names under `specs` (empty: "
                                   "no detection stages)")
    specs: dict[str, Spec] = {}
    budgets: list[Annotated[float, Field(gt=0, le=4, allow_inf_nan=False)]] = Field(
        [0.5, 1.0, 2.0], description="samples a detector flags, as a multiple of |D_c|")
    methods: list[str] = Field([], description="run names (entries of `methods:`) run on every detection cell")
    views: list[Literal["found", "hits"]] = Field(
        ["found", "hits"], description="found: D_f as flagged; hits: its true positives only")
    detectors: DetectorsCfg = DetectorsCfg()
    seed: NonNegativeInt = Field(0, description="seed of the detectors' fold split and the probe's halves")

    @field_validator("corruptions", "budgets", "methods", "views")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("values must be unique")
        return v

    @field_validator("specs")
    @classmethod
    def _names(cls, v):
        for name in v:
            if not RUN_NAME.match(name):
                raise ValueError(f"'{name}': a corruption name holds letters, digits, `_` and `-`, starting with "
                                 "a letter (it names files and DVC stages)")
        return v

    def spec(self, name: str):
        return self.specs[name]

    def detector_of(self, name: str) -> str:
        s = self.specs[name]
        return s.detector or DEFAULT_DETECTOR[s.kind]
