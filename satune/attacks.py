"""Threat models and attacks on tensors: L2 / Linf steps, PGD (optionally best-iterate), FGSM-RS.

Images live in [0,1] (normalisation is inside the model), so every iterate is projected onto the
eps-ball around x and onto the [0,1] box. The device is the model's; randomness comes from the
caller's generator; the BatchNorm mode during the attack is explicit (`attack_mode`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from satune.runtime import to_device
from satune.specs import ThreatSpec

LossFn = Callable[[torch.Tensor], torch.Tensor]  # adversarial images -> per-example loss


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per example, shaped to broadcast over `like` (N, C, H, W)."""
    return values.view(len(values), *([1] * (like.dim() - 1)))


class LinfStep:
    def __init__(self, eps: float, alpha: float):
        self.eps, self.alpha = eps, alpha

    def init(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        u = to_device(torch.rand(x.shape, generator=gen, dtype=x.dtype), x.device)
        return (2 * u - 1) * self.eps

    def step(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return delta + self.alpha * grad.sign()

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)


class L2Step:
    def __init__(self, eps: float, alpha: float):
        self.eps, self.alpha = eps, alpha

    def init(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        # A uniform direction with a radius drawn uniformly in [0, eps].
        direction = to_device(torch.randn(x.shape, generator=gen, dtype=x.dtype), x.device)
        radius = to_device(torch.rand(len(x), generator=gen, dtype=x.dtype), x.device) * self.eps
        return direction / _norms(direction) * _per_example(radius, x)

    def step(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return delta + self.alpha * grad / _norms(grad)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta * torch.clamp(self.eps / _norms(delta), max=1.0)


def _norms(v: torch.Tensor) -> torch.Tensor:
    return _per_example(v.flatten(1).norm(dim=1).clamp_min(1e-12), v)


def threat_step(norm: str, eps: float, alpha: float) -> LinfStep | L2Step:
    return LinfStep(eps, alpha) if norm == "linf" else L2Step(eps, alpha)


@contextlib.contextmanager
def attack_mode(model: nn.Module, bn_mode: str):
    """`eval`: BatchNorm uses running statistics. `train`: batch statistics, running averages
    left untouched (momentum 0 for the attack's forward passes)."""
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    model.train(bn_mode == "train")
    if bn_mode == "train":
        for bn in bns:
            bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
        model.train(was_training)


@dataclass(frozen=True)
class Attack:
    """One attack configuration; call it on a batch to get adversarial images."""

    norm: str
    eps: float
    alpha: float
    steps: int
    random_start: bool = False
    best_iterate: bool = False
    bn_mode: str = "eval"

    @classmethod
    def from_threat(cls, t: ThreatSpec) -> Attack:
        fgsm = t.attack == "fgsm_rs"
        return cls(t.norm, t.eps, t.alpha, t.n_steps, t.random_start or fgsm, t.best_iterate and not fgsm, t.bn_mode)

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        loss_fn: LossFn | None = None,
        gen: torch.Generator | None = None,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Adversarial versions of x: cross-entropy on `y` unless a per-example `loss_fn` is
        given; `start` replaces the random start (TRADES starts at 0.001 * N(0, I))."""
        if loss_fn is None:
            assert y is not None, "the cross-entropy attack needs labels"
            loss_fn = ce_loss(model, y)
        with attack_mode(model, self.bn_mode):
            step = threat_step(self.norm, self.eps, self.alpha)
            return pgd(x, loss_fn, step, self.steps, self.random_start, self.best_iterate, gen, start)


def ce_loss(model: nn.Module, y: torch.Tensor) -> LossFn:
    return lambda x_adv: F.cross_entropy(model(x_adv), y, reduction="none")


def pgd(
    x: torch.Tensor,
    loss_fn: LossFn,
    step: LinfStep | L2Step,
    steps: int,
    random_start: bool = False,
    best_iterate: bool = False,
    gen: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maximise `loss_fn` within the threat ball around x; returns detached adversarial images.

    With `best_iterate`, every iterate's per-example loss is kept and the highest-loss one is
    returned (SAT's "use_best"). Unlike SAT's code we also score the final iterate, so one step
    can never hand back the clean image.
    """
    x = x.detach()
    if start is not None:
        delta = step.project(start)
    else:
        delta = step.init(x, gen) if random_start else torch.zeros_like(x)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    best_x, best_loss = None, None
    for _ in range(steps):
        loss = loss_fn(x + delta)
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        if best_iterate:
            best_x, best_loss = _keep_best(best_x, best_loss, x + delta.detach(), loss.detach())
        delta = step.project(step.step(delta.detach(), grad))
        delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    x_adv = (x + delta).detach().clamp(0, 1)
    if best_iterate:
        with torch.no_grad():
            best_x, _ = _keep_best(best_x, best_loss, x_adv, loss_fn(x_adv))
        x_adv = best_x
    return x_adv


def _keep_best(best_x, best_loss, x, loss):
    if best_x is None:
        return x.clone(), loss.clone()
    better = loss > best_loss  # where, not masked assignment: no host sync inside the attack loop
    return torch.where(_per_example(better, x), x, best_x), torch.where(better, loss, best_loss)


__all__ = ["Attack", "L2Step", "LinfStep", "attack_mode", "ce_loss", "pgd", "threat_step"]
