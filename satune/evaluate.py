"""Clean, PGD-k and AutoAttack accuracy, overall, per class and on A_val / B_val for class splits,
each with its sample size and 95 % Wilson interval; per-example outcomes; integrity checks.

The model is evaluated in eval mode on images in [0,1]; robust accuracy counts every evaluated point
(misclassified clean points count as non-robust). PGD is the cheap proxy used for checkpoint
selection; AutoAttack is the number to report. This is the only module that imports AutoAttack.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import torch
import torch.nn as nn
import torch.nn.functional as F

from satune.attacks import Attack, attack_mode
from satune.data import TensorSource
from satune.models import device_of
from satune.specs import AutoAttackSpec, EvalSpec, ThreatSpec, interval_keys
from satune.stats import wilson

log = logging.getLogger("satune")


def eval_step_size(threat: ThreatSpec, spec: EvalSpec) -> float:
    """PGD's step for evaluation: 2.5*eps/k unless given (Madry et al.)."""
    return spec.pgd_step_size if spec.pgd_step_size is not None else 2.5 * threat.eps / spec.pgd_steps


def eval_attack(threat: ThreatSpec, spec: EvalSpec) -> Attack:
    """PGD-k for evaluation: random start, step eval_step_size (a stronger proxy than a small
    fixed step without restarts, which can overstate robustness by tens of points)."""
    return Attack(
        threat.norm, threat.eps, eval_step_size(threat, spec), spec.pgd_steps, random_start=True, bn_mode="eval"
    )


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    with attack_mode(model, "eval"):
        return _predict(model, x, batch_size) == y


def pgd_correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, batch_size: int, restarts: int, seed: int
) -> torch.Tensor:
    """Per example: still correct after every restart of the attack."""
    gen = torch.Generator().manual_seed(seed)
    with attack_mode(model, "eval"):
        ok = _predict(model, x, batch_size) == y
        for _ in range(restarts):
            for i in range(0, len(x), batch_size):
                sl = slice(i, i + batch_size)
                x_adv = attack(model, x[sl], y[sl], gen=gen)
                with torch.no_grad():
                    ok[sl] &= model(x_adv).argmax(1) == y[sl]
        return ok


def autoattack_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatSpec,
    aa: AutoAttackSpec,
    *,
    batch_size: int,
    n_classes: int,
) -> torch.Tensor:
    """AutoAttack through `pyautoattack` (PyPI), or upstream `autoattack` when that is installed."""
    norm = {"l2": "L2", "linf": "Linf"}[threat.norm]
    device = device_of(model)
    with attack_mode(model, "eval"):
        try:  # upstream fra31/auto-attack (git-only), positional/keyword API with bs=
            from autoattack import AutoAttack as Upstream

            attack = Upstream(
                model,
                norm=norm,
                eps=threat.eps,
                version=aa.version,
                device=str(device),
                seed=aa.seed,
                verbose=False,
                attacks_to_run=aa.attacks or [],
            )
            _fit_targets(attack, n_classes)
            x_adv = attack.run_standard_evaluation(x, y, bs=batch_size)
        except ImportError:
            from pyautoattack import AutoAttack

            attack = AutoAttack(
                model, norm=norm, eps=threat.eps, version=aa.version, device=device, seed=aa.seed, attacks=aa.attacks
            )
            _fit_targets(attack, n_classes)
            x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=batch_size)
        return (_predict(model, x_adv.to(device), batch_size) == y) & (_predict(model, x, batch_size) == y)


def autoattack_package() -> str:
    """Which AutoAttack ran, with its version (recorded beside every AutoAttack number)."""
    for name in ("autoattack", "pyautoattack"):
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            continue
    return "none"


def _fit_targets(attack, n_classes: int) -> None:
    # Targeted APGD/FAB default to 9 target classes; a task with fewer classes has fewer targets.
    k = min(9, n_classes - 1)
    attack.apgd_targeted.n_target_classes = min(attack.apgd_targeted.n_target_classes, k)
    attack.fab.n_target_classes = min(attack.fab.n_target_classes, k)
    if n_classes < 4 and "apgd-t" in attack.attacks_to_run:
        # The targeted DLR loss reads the 4th-largest logit: it does not exist with 3 classes.
        log.warning("AutoAttack: apgd-t needs at least 4 classes; running without it (%d classes)", n_classes)
        attack.attacks_to_run = [a for a in attack.attacks_to_run if a != "apgd-t"]


def select_outcomes(model: nn.Module, source: TensorSource, threat: ThreatSpec, spec: EvalSpec, seed: int) -> Outcomes:
    """Per select-slice example: right clean, right under PGD (one restart; seeded, so the same
    checkpoint always gets the same outcomes)."""
    x, y = source.tensors()
    outcomes = Outcomes(y.cpu())
    outcomes.correct["clean"] = clean_correct(model, x, y, spec.batch_size).cpu()
    outcomes.correct["pgd"] = pgd_correct(model, x, y, eval_attack(threat, spec), spec.batch_size, 1, seed).cpu()
    return outcomes


def select_metrics(model: nn.Module, source: TensorSource, threat: ThreatSpec, spec: EvalSpec, seed: int) -> dict:
    """Checkpoint-selection numbers on the select slice (clean and PGD; cheap enough every epoch)."""
    outcomes = select_outcomes(model, source, threat, spec, seed)
    return {f"select/{kind}_acc": _mean(ok) for kind, ok in outcomes.correct.items()}


# --------------------------------------------------------------------------------------------
# Numbers with their uncertainty, and the outcomes behind them


def counted(key: str, k: int, n: int) -> dict[str, float]:
    """An accuracy of k right out of n, with its sample size and interval (keys: interval_keys)."""
    n_key, lo_key, hi_key = interval_keys(key)
    lo, hi = wilson(k, n)
    return {key: k / n, n_key: n, lo_key: lo, hi_key: hi}


def with_interval(key: str, ok: torch.Tensor) -> dict[str, float]:
    return counted(key, int(ok.sum()), len(ok))


def accuracies(
    prefix: str,
    kind: str,
    ok: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
    a_classes: list[int] | None,
    per_class: bool = True,
) -> dict[str, float]:
    """`prefix/kind_acc` overall, per class, and on A / B for a class split, each with n and interval.
    A class absent from a small slice has no accuracy: it is left out rather than reported as NaN."""
    groups = {f"{prefix}/{kind}_acc": ok}
    if per_class:
        groups |= {f"{prefix}/class_{kind}_acc/{name}": ok[labels == c] for c, name in enumerate(classes)}
    if a_classes is not None:
        in_a = torch.isin(labels, torch.tensor(a_classes, device=labels.device))
        groups |= {f"{prefix}/{kind}_acc_A": ok[in_a], f"{prefix}/{kind}_acc_B": ok[~in_a]}
    return {k: v for key, g in groups.items() if len(g) for k, v in with_interval(key, g).items()}


@dataclass
class Outcomes:
    """Per evaluated example: its index in the final slice, its label, and for each evaluation
    whether the model got it right; AutoAttack may cover a prefix only. Two models evaluated on the
    same slice can be compared pairwise, example by example."""

    labels: torch.Tensor
    correct: dict[str, torch.Tensor] = field(default_factory=dict)

    def csv(self) -> str:
        kinds = list(self.correct)
        rows = [",".join(["index", "label", *kinds])]
        for i, label in enumerate(self.labels.tolist()):
            cells = [str(int(self.correct[k][i])) if i < len(self.correct[k]) else "" for k in kinds]
            rows.append(",".join([str(i), str(label), *cells]))
        return "\n".join(rows) + "\n"


def final_metrics(
    model: nn.Module,
    source: TensorSource,
    threat: ThreatSpec,
    spec: EvalSpec,
    classes: tuple[str, ...],
    seed: int,
    a_classes: list[int] | None = None,
    *,
    autoattack: bool = True,
) -> tuple[dict[str, float], Outcomes]:
    """Numbers on the final slice (`spec.n` examples, all by default): clean, PGD and, when
    `autoattack` and the spec ask for it, AutoAttack on the first `spec.autoattack.n`."""
    x, y = source.tensors(spec.n)
    outcomes = Outcomes(y.cpu())
    outcomes.correct["clean"] = clean_correct(model, x, y, spec.batch_size)
    attack = eval_attack(threat, spec)
    outcomes.correct["pgd"] = pgd_correct(model, x, y, attack, spec.batch_size, spec.pgd_restarts, seed)
    n_aa = spec.autoattack.count(len(y)) if autoattack else 0
    if n_aa > 0:
        log.info("AutoAttack %s on %d examples", spec.autoattack.version, n_aa)
        outcomes.correct["aa"] = autoattack_correct(
            model, x[:n_aa], y[:n_aa], threat, spec.autoattack, batch_size=spec.batch_size, n_classes=len(classes)
        )
    metrics: dict[str, float] = {}
    for kind, ok in outcomes.correct.items():
        outcomes.correct[kind] = ok = ok.cpu()
        metrics |= accuracies("eval", kind, ok, y[: len(ok)].cpu(), classes, a_classes)
    return metrics, outcomes


def _mean(ok: torch.Tensor) -> float:
    return float(ok.float().mean())


# --------------------------------------------------------------------------------------------
# Integrity: what must hold before a robust number means anything (cf. AutoAttack's checks.py)


def integrity_problems(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Checks on a batch, in eval mode as every evaluation here runs: the model is not training,
    a forward pass is deterministic, it returns logits (not probabilities), inputs lie in [0, 1],
    and input gradients are finite and not all zero (masked gradients fool gradient attacks)."""
    problems = []
    with attack_mode(model, "eval"):
        if any(m.training for m in model.modules()):
            problems.append("the model is in training mode during evaluation")
        with torch.no_grad():
            first, second = model(x), model(x)
        if not torch.equal(first, second):
            problems.append("two forward passes differ (dropout or other randomness at evaluation)")
        if bool(((first >= 0) & (first <= 1)).all()) and torch.allclose(
            first.sum(1), torch.ones(len(first)).to(first), atol=1e-4
        ):
            problems.append("the model returns probabilities (rows in [0, 1] summing to 1); attacks need logits")
        if x.min() < 0 or x.max() > 1:
            problems.append(f"inputs outside [0, 1] (min {float(x.min()):.3g}, max {float(x.max()):.3g})")
        xg = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
        if not bool(torch.isfinite(grad).all()):
            problems.append("input gradients are not finite")
        elif bool((grad == 0).all()):
            problems.append("input gradients are all zero (gradient masking?)")
    return problems


def robust_above_clean(outcomes: Outcomes) -> list[str]:
    """An example robust under an attack but misclassified clean means a broken evaluation."""
    clean = outcomes.correct["clean"]
    problems = []
    for kind, ok in outcomes.correct.items():
        wrong = int((ok & ~clean[: len(ok)]).sum()) if kind != "clean" else 0
        if wrong:
            problems.append(f"{wrong} examples count as robust under {kind} but are misclassified clean")
    return problems
