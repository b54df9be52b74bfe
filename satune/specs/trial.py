"""The trial: everything one training run needs (data, model, threat model, method, recipe,
evaluation, runtime), and the metric keys it reports."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import ValidationError, model_validator

from satune.specs.base import (
    AttackSteps,
    BatchSize,
    ClassName,
    Epochs,
    FieldProblems,
    Fraction,
    LoaderWorkers,
    Momentum,
    NonNegative,
    NonNegativeInt,
    OpenFraction,
    Positive,
    PositiveInt,
    Restarts,
    Seed,
    Spec,
    SpecError,
    Threads,
    TrialSeed,
    class_problems,
    raise_if,
    shown,
)
from satune.specs.messages import problem_lines
from satune.specs.methods import MethodSpec
from satune.specs.names import (
    DATASET_CLASSES,
    EMBEDDED_DATASETS,
    FINAL_ONLY,
    FINAL_PREFIXES,
    PER_EPOCH_METRICS,
    ArchName,
    DatasetName,
    interval_keys,
)


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
    resize: PositiveInt | None = None  # tensor sets: images resized to resize x resize (bilinear, antialiased)
    num_workers: LoaderWorkers = 0  # imagefolder: DataLoader worker processes

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        known = DATASET_CLASSES[self.dataset]
        if self.dataset not in EMBEDDED_DATASETS and self.root is None:
            problems.append(("root", f"required for dataset '{self.dataset}' (the folder that holds its files)"))
        if self.classes is not None and len(self.classes) < 2:
            problems.append(("classes", f"must name at least 2 classes, got {shown(self.classes)}"))
        problems += class_problems("classes", self.classes, known, self.dataset)
        raise_if(problems)
        return self

    def class_names(self) -> tuple[str, ...] | None:
        """The classes a trial sees, in label order (None when only the files know them)."""
        if self.classes is not None:
            return tuple(self.classes)
        return DATASET_CLASSES[self.dataset]

    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images a trial trains and is attacked on, as satune.data loads them."""
        if self.dataset == "imagefolder":  # RGB crops of image_size
            return (3, self.image_size, self.image_size)
        channels, height, width = _SHAPES[self.dataset]
        return (channels, self.resize, self.resize) if self.resize is not None else (channels, height, width)


# (C, H, W) of each tensor set (satune.data.catalog; tests/unit/test_specs_strict.py compares them).
_SHAPES = {
    "digits": (1, 8, 8),
    "mnist5k": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "svhn": (3, 32, 32),
}


def budget_problems(
    norm: str, eps: float | None, step: float | None, keys: tuple[str, str], shape: tuple[int, int, int] | None
) -> list[tuple[str, str]]:
    """A budget and a step size that no input in [0, 1] can use: above 1 under linf (every pixel may
    then take any value), above the distance between the two farthest images under l2 (known from
    the input's shape; None: l2 left unchecked)."""
    if norm == "linf":
        limit, why = 1.0, "pixels lie in [0, 1]"
    elif shape is not None:
        limit = math.sqrt(math.prod(shape))
        why = f"the l2 distance between the two farthest {'x'.join(map(str, shape))} images in [0, 1]"
    else:
        return []
    problems = []
    for key, value, beyond in zip(keys, (eps, step), (", so a larger budget allows any image", ""), strict=True):
        if value is not None and value > limit:
            pixels = norm == "linf" and value <= 255 and value.is_integer()
            hint = f" (did you mean {value:g}/255?)" if pixels else ""
            problems.append((key, f"must be at most {limit:.4g} with norm {norm} ({why}{beyond}), got {value:g}{hint}"))
    return problems


class ModelSpec(Spec):
    arch: ArchName = "small_cnn"


class ThreatSpec(Spec):
    norm: Literal["l2", "linf"]
    eps: Positive
    steps: AttackSteps = 7
    step_size: Positive | None = None  # default eps/4 for PGD, 1.25*eps for FGSM-RS
    attack: Literal["pgd", "fgsm_rs"] = "pgd"
    random_start: bool = False
    best_iterate: bool = False  # return the highest-loss iterate (SAT's "use_best")
    bn_mode: Literal["eval", "train"] = "eval"  # BatchNorm during the attack (train: batch stats, no update)

    @model_validator(mode="after")
    def _rules(self):
        problems = budget_problems(self.norm, self.eps, self.step_size, ("eps", "step_size"), None)
        # (compared with the default, not with what was set: a spec written out whole validates again)
        if self.attack == "fgsm_rs" and self.steps not in (1, ThreatSpec.model_fields["steps"].default):
            problems.append(("steps", f"fgsm_rs takes exactly one step, got {self.steps}"))
        raise_if(problems)
        return self

    @property
    def n_steps(self) -> int:
        return 1 if self.attack == "fgsm_rs" else self.steps

    def under(self, norm: str | None, eps: float | None) -> ThreatSpec:
        """The same attack under another norm and/or budget (its step size then derived anew)."""
        if norm is None and eps is None:
            return self
        try:
            return ThreatSpec.model_validate(
                {
                    **self.model_dump(exclude_unset=True),
                    "norm": norm or self.norm,
                    "eps": eps or self.eps,
                    "step_size": None,
                }
            )
        except ValidationError as exc:  # e.g. `satune eval --eps 2` on a linf trial
            raise SpecError([f"the evaluation threat: {line}" for line in problem_lines(exc, ThreatSpec)]) from None

    @property
    def alpha(self) -> float:
        if self.step_size is not None:
            return self.step_size
        return 1.25 * self.eps if self.attack == "fgsm_rs" else self.eps / 4


class TrainSpec(Spec):
    epochs: Epochs = 10
    batch_size: BatchSize = 128
    lr: Positive = 0.05
    momentum: Momentum = 0.9
    weight_decay: NonNegative = 5e-4
    schedule: Literal["constant", "step", "cosine"] = "step"
    milestones: list[Fraction] = [0.5, 0.75]  # step schedule: where LR drops, as fractions of training
    gamma: Fraction = 0.1
    # End training at the check where robust accuracy collapsed (catastrophic overfitting of fast AT,
    # detected on the select slice either way); the checkpoint selected before it is evaluated.
    stop_on_collapse: bool = False

    @model_validator(mode="after")
    def _rules(self):
        if sorted(self.milestones) != list(self.milestones):
            raise FieldProblems([("milestones", f"must be increasing, got {shown(self.milestones)}")])
        return self

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of the base LR during `epoch` (0-based)."""
        progress = epoch / self.epochs
        if self.schedule == "step":
            return self.gamma ** sum(progress >= m for m in self.milestones)
        if self.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    def lr_drops(self) -> list[int]:
        """The epochs that start at a step schedule's lower learning rate (0-based)."""
        if self.schedule != "step":
            return []
        return [e for e in range(1, self.epochs) if self.lr_factor(e) < self.lr_factor(e - 1)]


class AutoAttackSpec(Spec):
    version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attacks: list[Literal["apgd-ce", "apgd-t", "fab", "fab-t", "square", "apgd-dlr"]] | None = None
    n: NonNegativeInt | Literal["all"] = 1000  # examples of the final slice (a prefix); 0 skips AutoAttack
    seed: Seed = 0

    def count(self, available: int) -> int:
        """How many examples it attacks out of `available`."""
        return available if self.n == "all" else min(self.n, available)

    @model_validator(mode="after")
    def _rules(self):
        if (self.version == "custom") != (self.attacks is not None):
            raise FieldProblems([("attacks", "required with version: custom and only allowed there")])
        return self


class EvalSpec(Spec):
    # The evaluation threat model, when it differs from training's (TRADES recipes train at eps
    # 0.031 and are evaluated at 8/255); None: the training threat's.
    norm: Literal["l2", "linf"] | None = None
    eps: Positive | None = None
    pgd_steps: AttackSteps = 20
    pgd_step_size: Positive | None = None  # default 2.5*eps/steps (Madry et al.), random start
    pgd_restarts: Restarts = 1
    n: PositiveInt | None = None  # examples of the final slice for clean/PGD (None: all)
    batch_size: BatchSize = 256
    autoattack: AutoAttackSpec = AutoAttackSpec()
    # Checkpoints checked on the select slice: every k-th epoch, the first epoch at each lower learning rate
    # of a step schedule (where robust overfitting tends to leave the best one), and the last.
    select_every: PositiveInt = 1
    select_metric: Literal["select/pgd_acc", "select/clean_acc"] = "select/pgd_acc"

    @model_validator(mode="after")
    def _rules(self):
        if self.norm is not None:  # (under the training threat's norm: checked by the trial)
            raise_if(budget_problems(self.norm, self.eps, self.pgd_step_size, ("eps", "pgd_step_size"), None))
        return self


class RuntimeSpec(Spec):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: Threads | None = None  # torch intra-op threads (None: torch's default / Tune's cpu share)
    amp: bool = False  # bfloat16 autocast on CUDA GPUs that support it (ignored elsewhere)
    channels_last: bool | None = None  # NHWC weights (tensor cores' layout); None: on CUDA, for image models
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
        problems = self.method.trial_problems(self)
        if self.eval.norm is not None and self.eval.norm != self.threat.norm and self.eval.eps is None:
            problems.append(("eval.eps", f"required when eval.norm ({self.eval.norm}) differs from threat.norm"))
        shape = self.data.input_shape()
        threat, ev = self.threat, self.eval
        problems += budget_problems(
            threat.norm, threat.eps, threat.step_size, ("threat.eps", "threat.step_size"), shape
        )
        problems += budget_problems(
            ev.norm or threat.norm, ev.eps, ev.pgd_step_size, ("eval.eps", "eval.pgd_step_size"), shape
        )
        raise_if(problems)
        return self

    @property
    def eval_threat(self) -> ThreatSpec:
        """The threat model robustness is evaluated under."""
        return self.threat.under(self.eval.norm, self.eval.eps)

    def selection_epochs(self) -> list[int]:
        """The epochs (0-based) whose checkpoints are checked on the select slice and may be selected:
        every select_every-th, each first epoch after a learning-rate drop, and the last; none inside
        the method's warm-up."""
        last, every = self.train.epochs - 1, self.eval.select_every
        checks = {e for e in range(last) if (e + 1) % every == 0} | set(self.train.lr_drops()) | {last}
        return sorted(e for e in checks if e >= min(self.method.warmup(), last))


def reported_metrics(trial: TrialSpec) -> set[str]:
    """Every metric key a trial with this spec reports (per epoch or at the end)."""
    evals = ["clean", "pgd"] + (["aa"] if trial.eval.autoattack.n != 0 else [])
    common = set(PER_EPOCH_METRICS) | FINAL_ONLY | {f"eval/{k}_acc" for k in evals}
    common |= {f"eval/class_{k}_acc/{c}" for k in evals for c in trial.data.class_names() or ()}
    common |= {f"{where}/{k}_acc" for where in ("proxy", "last") for k in ("clean", "pgd")}
    keys = trial.method.metrics(common, evals)
    accuracies = [k for k in keys if k.startswith(FINAL_PREFIXES) and "_acc" in k]
    return keys | {i for k in accuracies for i in interval_keys(k)}
