"""Training methods' settings: one spec class per method kind, with what the kind needs from the
rest of a trial (cross-field rules, the metrics it reports, what a sweep prepares once for it)."""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from satune.specs.base import (
    BatchSize,
    ClassName,
    Epochs,
    Fraction,
    Name,
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    Seed,
    Spec,
    check,
    class_problems,
    raise_if,
    shown,
)
from satune.specs.names import AUX_CLASSES, EMBEDDED_DATASETS, AuxDatasetName

if TYPE_CHECKING:
    from satune.specs.trial import TrialSpec


class MethodSpecBase(Spec):
    """A training method's settings. A method kind is this spec class (one subclass here, in
    MethodSpec below), one module in satune/methods/ and one line in satune.methods.KINDS; what
    the kind needs from the rest of satune it declares here (docs/methods.md, adding a method)."""

    kind: str

    def trial_problems(self, trial: TrialSpec) -> list[tuple[str, str]]:
        """Rules that need the rest of the trial (paths relative to the trial, e.g. method.classes)."""
        return []

    def metrics(self, common: set[str], evals: list[str]) -> set[str]:
        """The metric keys a trial of this kind reports, given those every trial reports and the
        evaluations that run (clean, pgd, aa)."""
        return common

    def preparation(self) -> str | None:
        """What every trial of a sweep shares and the driver computes once, before them (said in
        its output); None: nothing."""
        return None

    def with_paths(self, resolve: Callable[[str], str]) -> dict:
        """The method as written (unset fields left out), with every folder it names resolved."""
        return self.model_dump(exclude_unset=True, by_alias=True)

    def extra_data(self) -> list[str]:
        """Data trained on beyond the task's training set (RobustBench's "extra data" column)."""
        return []

    def warmup(self) -> int:
        """Epochs before the method is itself (BiaMAT's warm-up): their checkpoints are never selected."""
        return 0


class CleanSpec(MethodSpecBase):
    """Standard training: nothing is attacked."""

    kind: Literal["clean"] = "clean"

    def metrics(self, common: set[str], evals: list[str]) -> set[str]:
        return common - {"train/adv_acc"}  # nothing is attacked


class AtSpec(MethodSpecBase):
    """PGD adversarial training (Madry et al., 2018): every example is attacked."""

    kind: Literal["at"] = "at"


class SatSpec(MethodSpecBase):
    """Subset adversarial training (Losch et al., ICLR 2024): only A is attacked."""

    kind: Literal["sat"] = "sat"
    split: Literal["class", "example"] = "example"
    ranking: Literal["entropy_hardest", "entropy_easiest", "random"] = "entropy_hardest"
    fraction: Fraction | None = None  # share of the ranking (examples or classes) put into A
    classes: list[ClassName] | None = None  # class split by name
    weighting: Literal["vanilla", "balanced", "overemphasized", "custom"] | None = None
    w_A: Positive | None = None
    w_B: NonNegative | None = None
    ranking_epochs: Epochs | None = None  # epochs of the clean fit that scores difficulty
    ranking_seed: Seed = 0  # one ranking per sweep, not one per trial

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        if self.split == "example":
            if self.classes is not None:
                problems.append(("classes", "only a class split takes classes; an example split takes fraction"))
            if self.fraction is None:
                problems.append(("fraction", "required for an example split (share of examples in A)"))
        elif (self.fraction is None) == (self.classes is None):
            problems.append(("fraction", "a class split takes exactly one of fraction or classes"))
        # (compared with the default, not with what was set: a spec written out whole validates again)
        if self.classes is not None and self.ranking != SatSpec.model_fields["ranking"].default:
            problems.append(("ranking", "unused when classes are listed; remove it or use fraction"))
        problems += class_problems("classes", self.classes, None, "")
        custom = self.weighting in (None, "custom")
        for name in ("w_A", "w_B"):
            if not custom and getattr(self, name) is not None:
                problems.append((name, f"only used with weighting: custom (weighting is {self.weighting})"))
        if self.weighting == "custom" and self.w_A is None and self.w_B is None:
            problems.append(("weighting", "custom weighting needs w_A and/or w_B"))
        raise_if(problems)
        return self

    @property
    def resolved_weighting(self) -> str:
        if self.weighting is not None:
            return self.weighting
        return "custom" if (self.w_A is not None or self.w_B is not None) else "vanilla"

    def trial_problems(self, trial: TrialSpec) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        names = trial.data.class_names()
        if names is None:
            return problems
        if self.classes is not None:  # (repeats were reported by the spec itself)
            problems += class_problems("method.classes", self.classes, names, "this trial's data", repeats=False)
            if len(self.classes) >= len(names):
                problems.append(("method.classes", "must leave at least one class in B"))
        if self.split == "class" and self.fraction is not None:
            if class_count(self.fraction, len(names)) >= len(names) and self.fraction < 1:
                problems.append(("method.fraction", f"puts every class of {len(names)} into A; use kind: at"))
        return problems

    def metrics(self, common: set[str], evals: list[str]) -> set[str]:
        if self.split != "class":
            return common
        selected = {f"proxy/{k}_acc_{s}" for k in ("clean", "pgd") for s in "AB"}  # on the select slice too
        return common | selected | {f"eval/{k}_acc_{s}" for k in evals for s in "AB"}  # A_val and B_val

    def preparation(self) -> str | None:
        if self.ranking == "random" or self.classes is not None:
            return None
        return "SAT ranking: one clean fit for the difficulty scores (cached for every trial)"


class TradesSpec(MethodSpecBase):
    """TRADES (Zhang et al., 2019): clean CE + beta * KL(clean || adversarial), KL-maximising attack."""

    kind: Literal["trades"] = "trades"
    beta: Positive = 6.0


def _aux_shorthand(value: Any) -> Any:
    """'mnist5k[5-9]' / 'cifar10[cat,dog]' / 'digits' -> {dataset, classes}."""
    if not isinstance(value, str):
        return value
    m = re.fullmatch(r"\s*([\w-]+)\s*(?:\[(.*)\])?\s*", value)
    if m is None:
        return value
    name, inner = m.groups()
    if inner is None:
        return {"dataset": name}
    rng = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", inner)
    if rng:
        classes = [str(i) for i in range(int(rng.group(1)), int(rng.group(2)) + 1)]
    else:
        classes = [c.strip() for c in inner.split(",") if c.strip()]
    return {"dataset": name, "classes": classes}


class AuxSpec(Spec):
    """One auxiliary source. In YAML a string works too: `digits`, `mnist5k[5-9]`, `cifar100`."""

    dataset: AuxDatasetName
    classes: list[ClassName] | None = None  # keep only these classes of the source
    root: str | None = None  # torchvision sets: where the files are (default: trial.data.root)
    download: bool = False
    size: PositiveInt | None = None  # keep this many images (stratified); noise: how many to draw (default 5000)
    name: Name | None = None

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        known = AUX_CLASSES[self.dataset]
        if self.dataset == "noise" and self.classes is not None:
            problems.append(("classes", "noise has random labels over 10 classes; it takes no classes"))
        problems += class_problems("classes", self.classes, known, self.dataset)
        raise_if(problems)
        return self

    @property
    def label(self) -> str:
        """The source's name in metric keys (biamat/hi_ratio/<label>)."""
        if self.name is not None:
            return self.name
        return self.dataset + ("_" + "_".join(self.classes) if self.classes else "")

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else len(AUX_CLASSES[self.dataset])


AuxItem = Annotated[AuxSpec, BeforeValidator(_aux_shorthand)]


class BiamatSpec(MethodSpecBase):
    """BiaMAT (Lee & Lee, WACV 2023): adversarial training with auxiliary data, a second head, and
    a confidence gate. Defaults follow the official code per variant (see docs/methods.md)."""

    kind: Literal["biamat"] = "biamat"
    aux: Annotated[list[AuxItem], BeforeValidator(lambda v: v if isinstance(v, list) else [v])]
    variant: Literal["at", "trades"] = "at"
    alpha: NonNegative | None = None  # weight of the auxiliary loss (default: at 1.0, trades 0.5)
    pi: Positive | None = None  # threshold factor: omega = pi * mean primary confidence (at 0.55, trades 0.5)
    gate: Literal["biamat", "naive", "all_uniform"] = "biamat"
    warmup_epochs: NonNegativeInt | None = None  # default 5, 0 for gate: all_uniform (no warm-up there)
    warmup_mode: Literal["primary_only", "naive"] = "primary_only"
    omega_mode: Literal["fixed_after_warmup", "per_batch"] = "fixed_after_warmup"
    beta: Positive | None = None  # TRADES variant only (default 6)
    aux_hi_loss: Literal["trades", "ce"] | None = None  # TRADES variant: loss of high-confidence aux images
    aux_batch_size: BatchSize | None = None  # auxiliary images per step (default: train.batch_size)
    aux_head: PositiveInt | None = None  # size of the auxiliary head; must match the auxiliary classes

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        if not self.aux:
            problems.append(("aux", "must name at least one auxiliary dataset"))
        if self.variant != "trades":
            for name in ("beta", "aux_hi_loss"):
                if getattr(self, name) is not None:
                    problems.append((name, f"only used with variant: trades (variant is {self.variant})"))
        labels = [a.label for a in self.aux]
        if len(set(labels)) != len(labels):
            problems.append(("aux", f"sources need distinct names, got {shown(labels)} (set aux[i].name)"))
        if self.aux_head is not None and self.aux and self.aux_head != self.aux_classes:
            sizes = ", ".join(f"{a.label}: {a.n_classes}" for a in self.aux)
            problems.append(
                ("aux_head", f"{self.aux_head} does not match the {self.aux_classes} auxiliary classes ({sizes})")
            )
        raise_if(problems)
        return self

    @property
    def aux_classes(self) -> int:
        """The auxiliary head's size: the sources' label spaces side by side."""
        return sum(a.n_classes for a in self.aux)

    @property
    def resolved_alpha(self) -> float:
        return self.alpha if self.alpha is not None else (1.0 if self.variant == "at" else 0.5)

    @property
    def resolved_pi(self) -> float:
        return self.pi if self.pi is not None else (0.55 if self.variant == "at" else 0.5)

    @property
    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else 6.0

    @property
    def resolved_warmup_epochs(self) -> int:
        # The official all-uniform baseline has no warm-up; the gated variants warm up 5 epochs.
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return 0 if self.gate == "all_uniform" else 5

    def resolved_aux_hi_loss(self, primary: str) -> str:
        """The loss of high-confidence auxiliary images (TRADES variant): the official code's CE
        path for a CIFAR-100 primary, TRADES otherwise."""
        if self.aux_hi_loss is not None:
            return self.aux_hi_loss
        return "ce" if primary == "cifar100" else "trades"

    def trial_problems(self, trial: TrialSpec) -> list[tuple[str, str]]:
        problems = []
        if self.resolved_warmup_epochs >= trial.train.epochs:
            problems.append(
                ("method.warmup_epochs", f"must be below train.epochs ({trial.train.epochs}): the gate would never run")
            )
        data, names = trial.data, trial.data.class_names()
        for i, a in enumerate(self.aux):
            if a.dataset == data.dataset and _overlap(a.classes, data.classes, names):
                problems.append(
                    (
                        f"method.aux[{i}]",
                        f"shares classes with the primary {a.dataset}: its images would be "
                        "trained on twice, or validation images trained on (give it other classes)",
                    )
                )
            if a.dataset not in EMBEDDED_DATASETS | {"noise"} and a.root is None and data.root is None:
                problems.append(
                    (f"method.aux[{i}].root", f"required for dataset '{a.dataset}' (or set trial.data.root)")
                )
        return problems

    def extra_data(self) -> list[str]:
        return [a.label for a in self.aux]

    def warmup(self) -> int:
        return self.resolved_warmup_epochs

    def with_paths(self, resolve: Callable[[str], str]) -> dict:
        data = self.model_dump(exclude_unset=True, by_alias=True)
        data["aux"] = [
            a.model_dump(exclude_unset=True) | ({"root": resolve(a.root)} if a.root else {}) for a in self.aux
        ]
        return data

    def metrics(self, common: set[str], evals: list[str]) -> set[str]:
        keys = common | {"biamat/hi_ratio"} | ({"biamat/omega"} if self.gate == "biamat" else set())
        if len(self.aux) > 1:
            keys |= {f"biamat/hi_ratio/{a.label}" for a in self.aux}
        return keys


class TransferSpec(MethodSpecBase):
    """SAT's transfer setting (S-CSAT / S-ESAT, paper §4.3): a trained source model's backbone,
    frozen (BatchNorm in eval mode), under a new head Linear(K, hidden)-ReLU-Linear(hidden, N) trained
    with clean cross-entropy on this trial's data; clean and robust accuracy are measured here."""

    kind: Literal["transfer"] = "transfer"
    # mlflow:<run id> (a finished trial in this sweep's tracking store) or a `satune run` folder
    source: Annotated[str, check("mlflow:<run id> or a satune run folder", lambda v: bool(v.strip()))]
    hidden: PositiveInt | None = None  # width of the new head's hidden layer (default K, the feature size)

    def metrics(self, common: set[str], evals: list[str]) -> set[str]:
        return common - {"train/adv_acc"}  # the head trains on clean images

    def extra_data(self) -> list[str]:
        return [f"the source model's training data ({self.source})"]

    def with_paths(self, resolve: Callable[[str], str]) -> dict:
        data = self.model_dump(exclude_unset=True, by_alias=True)
        if not self.source.startswith("mlflow:"):
            data["source"] = resolve(self.source)
        return data


# Every kind, by its `kind` key. A new kind goes here too (a test checks that none is missing).
MethodSpec = Annotated[
    CleanSpec | AtSpec | SatSpec | TradesSpec | BiamatSpec | TransferSpec, Field(discriminator="kind")
]
METHOD_SPECS: tuple[type[MethodSpecBase], ...] = typing.get_args(typing.get_args(MethodSpec)[0])
METHOD_KINDS: tuple[str, ...] = tuple(c.model_fields["kind"].default for c in METHOD_SPECS)


def _overlap(aux: list[str] | None, primary: list[str] | None, all_names) -> bool:
    a = set(aux if aux is not None else all_names or ())
    p = set(primary if primary is not None else all_names or ())
    return bool(a & p)


def class_count(fraction: float, n_classes: int) -> int:
    """How many classes a CSAT fraction puts into A (at least one)."""
    return max(1, round(fraction * n_classes))
