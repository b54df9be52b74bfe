"""Clean, PGD-k and AutoAttack accuracy, overall, per class and on A_val / B_val for class splits.

The model is evaluated in eval mode on images in [0,1]; robust accuracy counts every evaluated point
(misclassified clean points count as non-robust). PGD is the cheap proxy used for checkpoint
selection; AutoAttack is the number to report. This is the only module that imports AutoAttack.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from satune.attacks import Attack
from satune.data import TensorSource
from satune.models import device_of
from satune.specs import EvalSpec, ThreatSpec

log = logging.getLogger("satune")


def eval_step_size(threat: ThreatSpec, spec: EvalSpec) -> float:
    """PGD's step for evaluation: 2.5*eps/k unless given (Madry et al.)."""
    return spec.pgd_step_size if spec.pgd_step_size is not None else 2.5 * threat.eps / spec.pgd_steps


def eval_attack(threat: ThreatSpec, spec: EvalSpec) -> Attack:
    """PGD-k for evaluation: random start, step eval_step_size (a stronger proxy than a small
    fixed step without restarts, which can overstate robustness by tens of points)."""
    return Attack(threat.norm, threat.eps, eval_step_size(threat, spec), spec.pgd_steps, random_start=True,
                  bn_mode="eval")  # fmt: skip


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return _predict(model, x, batch_size) == y
    finally:
        model.train(was)


def pgd_correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, batch_size: int, restarts: int, seed: int
) -> torch.Tensor:
    """Per example: still correct after every restart of the attack."""
    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    try:
        ok = _predict(model, x, batch_size) == y
        for _ in range(restarts):
            for i in range(0, len(x), batch_size):
                sl = slice(i, i + batch_size)
                x_adv = attack(model, x[sl], y[sl], gen=gen)
                with torch.no_grad():
                    ok[sl] &= model(x_adv).argmax(1) == y[sl]
        return ok
    finally:
        model.train(was)


def autoattack_correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatSpec, spec: EvalSpec, n_classes: int
) -> torch.Tensor:
    """AutoAttack through `pyautoattack` (PyPI), or upstream `autoattack` when that is installed."""
    aa = spec.autoattack
    norm = {"l2": "L2", "linf": "Linf"}[threat.norm]
    device = device_of(model)
    was = model.training
    model.eval()
    try:
        try:  # upstream fra31/auto-attack (git-only), positional/keyword API with bs=
            from autoattack import AutoAttack as Upstream

            attack = Upstream(model, norm=norm, eps=threat.eps, version=aa.version, device=str(device), seed=aa.seed,
                              verbose=False, attacks_to_run=aa.attacks or [])  # fmt: skip
            _fit_targets(attack, n_classes)
            x_adv = attack.run_standard_evaluation(x, y, bs=spec.batch_size)
        except ImportError:
            from pyautoattack import AutoAttack

            attack = AutoAttack(model, norm=norm, eps=threat.eps, version=aa.version, device=device, seed=aa.seed,
                                attacks=aa.attacks)  # fmt: skip
            _fit_targets(attack, n_classes)
            x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=spec.batch_size)
        return (_predict(model, x_adv.to(device), spec.batch_size) == y) & (_predict(model, x, spec.batch_size) == y)
    finally:
        model.train(was)


def _fit_targets(attack, n_classes: int) -> None:
    # Targeted APGD/FAB default to 9 target classes; a task with fewer classes has fewer targets.
    k = min(9, n_classes - 1)
    attack.apgd_targeted.n_target_classes = min(attack.apgd_targeted.n_target_classes, k)
    attack.fab.n_target_classes = min(attack.fab.n_target_classes, k)
    if n_classes < 4 and "apgd-t" in attack.attacks_to_run:
        # The targeted DLR loss reads the 4th-largest logit: it does not exist with 3 classes.
        log.warning("AutoAttack: apgd-t needs at least 4 classes; running without it (%d classes)", n_classes)
        attack.attacks_to_run = [a for a in attack.attacks_to_run if a != "apgd-t"]


def select_metrics(model: nn.Module, source: TensorSource, threat: ThreatSpec, spec: EvalSpec, seed: int) -> dict:
    """Checkpoint-selection numbers on the select slice (clean and PGD; cheap enough every epoch)."""
    x, y = source.tensors()
    attack = eval_attack(threat, spec)
    return {
        "select/clean_acc": _mean(clean_correct(model, x, y, spec.batch_size)),
        "select/pgd_acc": _mean(pgd_correct(model, x, y, attack, spec.batch_size, 1, seed)),
    }


def final_metrics(
    model: nn.Module,
    source: TensorSource,
    threat: ThreatSpec,
    spec: EvalSpec,
    classes: tuple[str, ...],
    seed: int,
    a_classes: list[int] | None = None,
) -> dict[str, float]:
    """Final numbers on the final slice: overall, per class, and on A_val / B_val for class splits."""
    x, y = source.tensors(spec.n)
    results = {
        "clean": clean_correct(model, x, y, spec.batch_size),
        "pgd": pgd_correct(model, x, y, eval_attack(threat, spec), spec.batch_size, spec.pgd_restarts, seed),
    }
    labels = {"clean": y, "pgd": y}
    n_aa = min(spec.autoattack.n, len(y))
    if n_aa > 0:
        log.info("AutoAttack %s on %d examples", spec.autoattack.version, n_aa)
        results["aa"] = autoattack_correct(model, x[:n_aa], y[:n_aa], threat, spec, len(classes))
        labels["aa"] = y[:n_aa]
    metrics: dict[str, float] = {}
    for kind, ok in results.items():
        lab = labels[kind]
        groups = {f"eval/{kind}_acc": ok}
        groups |= {f"eval/class_{kind}_acc/{name}": ok[lab == c] for c, name in enumerate(classes)}
        if a_classes is not None:
            in_a = torch.isin(lab, torch.tensor(a_classes, device=lab.device))
            groups |= {f"eval/{kind}_acc_A": ok[in_a], f"eval/{kind}_acc_B": ok[~in_a]}
        # A class absent from a small slice has no accuracy: leave it out rather than report NaN.
        metrics |= {key: _mean(g) for key, g in groups.items() if len(g)}
    return metrics


def _mean(ok: torch.Tensor) -> float:
    return float(ok.float().mean())
