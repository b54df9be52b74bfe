"""BiaMAT (Lee & Lee, "Inducing Data Amplification Using Auxiliary Datasets in Adversarial Training",
WACV 2023): adversarial training on a primary batch plus an auxiliary batch, with a second head.

Every step draws n_p primary and n_a auxiliary images. The gate scores each auxiliary image by the
primary head's max softmax on the clean image (eval-mode BN) and compares it with
omega = pi * mean confidence of the primary batch. Low-confidence images (Lo) are trained towards the
uniform distribution on the primary head; high-confidence ones (Hi) towards their own labels on the
auxiliary head. The auxiliary loss is averaged over all n_a images and weighted by alpha.

Variants, as in the official code: `at` (joint PGD on the concatenated batch, adversarial CE only)
and `trades` (KL attack, TRADES loss on both heads). The exact formulas and where we depart from the
code are in docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from satune.attacks import Attack, attack_mode
from satune.data import augmentation
from satune.data.aux import AuxData, load_aux
from satune.data.sources import Batch
from satune.methods.base import BuildContext, Built, Kind, MethodBase, batch_sums
from satune.methods.trades import clean_logits, kl, trades_start
from satune.runtime import generator
from satune.specs import BiamatSpec


def uniform_ce(logits: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy to the uniform distribution over the classes."""
    return -F.log_softmax(logits, dim=1).mean(1)


def confidence(logits: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits.float(), dim=1).amax(1)


def omega_from(primary_confidence: torch.Tensor, pi: float) -> torch.Tensor:
    """A 0-d tensor on the batch's device: the gate compares against it without a host sync."""
    return pi * primary_confidence.mean()


def gate(aux_confidence: torch.Tensor, omega: float | torch.Tensor | None, mode: str) -> torch.Tensor:
    """Hi membership per auxiliary image: at or above omega (biamat), all (naive), none (all_uniform)."""
    if mode == "naive":
        return torch.ones_like(aux_confidence, dtype=torch.bool)
    if mode == "all_uniform":
        return torch.zeros_like(aux_confidence, dtype=torch.bool)
    assert omega is not None, "the biamat gate needs omega"
    return aux_confidence >= omega


def aux_losses(
    primary_logits: torch.Tensor, aux_logits: torch.Tensor, y_aux: torch.Tensor, hi: torch.Tensor
) -> torch.Tensor:
    """Per auxiliary image: CE on the auxiliary head for Hi, CE to uniform on the primary head for Lo."""
    own = F.cross_entropy(aux_logits, y_aux, reduction="none")
    return torch.where(hi, own, uniform_ce(primary_logits))


def at_loss(
    heads: list[torch.Tensor], y: torch.Tensor, y_aux: torch.Tensor, hi: torch.Tensor, alpha: float
) -> torch.Tensor:
    """AT+BiaMAT on the adversarial joint batch: mean_P CE + alpha * mean over all aux images."""
    n_p = len(y)
    lp, la = heads
    loss = F.cross_entropy(lp[:n_p], y)
    if alpha > 0:  # alpha = 0 leaves the auxiliary head out of the graph entirely
        loss = loss + alpha * aux_losses(lp[n_p:], la[n_p:], y_aux, hi).mean()
    return loss


def trades_loss(
    clean: list[torch.Tensor], adv: list[torch.Tensor], y, y_aux, hi, alpha: float, beta: float, hi_loss: str
) -> torch.Tensor:
    """TRADES+BiaMAT: L_pri + alpha * (S_Lo + S_Hi) / n_a (official TRADES code, both branches)."""
    n_p = len(y)
    (lp, la), (ap, aa) = clean, adv
    loss = F.cross_entropy(lp[:n_p], y) + beta * kl(lp[:n_p], ap[:n_p]).mean()
    if alpha > 0:
        lo_terms = uniform_ce(lp[n_p:]) + beta * kl(lp[n_p:], ap[n_p:])
        if hi_loss == "ce":  # CIFAR-100 path: adversarial CE on the auxiliary head only
            hi_terms = F.cross_entropy(aa[n_p:], y_aux, reduction="none")
        else:
            hi_terms = F.cross_entropy(la[n_p:], y_aux, reduction="none") + beta * kl(la[n_p:], aa[n_p:])
        loss = loss + alpha * torch.where(hi, hi_terms, lo_terms).mean()
    return loss


class Biamat(MethodBase):
    def __init__(self, spec: BiamatSpec, attack: Attack, aux: AuxData, *, aux_batch_size: int, hi_loss: str, seed: int):
        self.spec, self.attack, self.aux = spec, attack, aux
        self.alpha, self.pi, self.beta = spec.resolved_alpha, spec.resolved_pi, spec.resolved_beta
        self.hi_loss = hi_loss  # TRADES variant: the loss of high-confidence aux images
        self.warmup_epochs = spec.resolved_warmup_epochs
        self.aux_batch_size, self.seed = aux_batch_size, seed
        self.omega: float | torch.Tensor | None = None  # frozen at the first gated step (fixed_after_warmup)
        self.epoch = 0
        self._stream: Iterator[Batch] | None = None  # set by start_epoch

    # -- state that must survive a resume: omega cannot be recomputed after the fact
    def state_dict(self) -> dict:
        return {"omega": None if self.omega is None else float(self.omega)}

    def load_state_dict(self, state: dict) -> None:
        self.omega = state.get("omega")

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        # The auxiliary stream restarts from a generator of (seed, epoch): a resumed epoch draws
        # the same auxiliary batches as the uninterrupted run.
        self._stream = self.aux.stream(self.aux_batch_size, generator(self.seed, "aux", epoch))

    @property
    def warming_up(self) -> bool:
        return self.epoch < self.warmup_epochs

    def step(self, model: nn.Module, x, y, idx, gen) -> dict:
        assert self._stream is not None, "start_epoch() first"
        xa, ya, ia = next(self._stream)
        xa, ya, ia = xa.to(x.device), ya.to(x.device), ia.to(x.device)
        n_p, n_a = len(y), len(ya)
        xb = torch.cat([x, xa])

        if self.warming_up:  # no gate: every aux image on its own head, weight 0 (primary_only) or alpha
            hi = torch.ones(n_a, dtype=torch.bool, device=x.device)
            alpha = 0.0 if self.spec.warmup_mode == "primary_only" else self.alpha
        else:
            hi = self._gate(model, x, xa)
            alpha = self.alpha

        step = self._at_step if self.spec.variant == "at" else self._trades_step
        loss, logits, adv_logits = step(model, xb, y, ya, hi, alpha, gen)
        stats = batch_sums(loss, logits, y, adv_logits, None, (n_p + n_a) * self.attack.steps)
        if not self.warming_up:
            src = self.aux.source_of[ia]
            stats["aux_n"] = n_a
            stats["aux_hi"] = hi.sum()
            for k, label in enumerate(self.aux.labels):
                stats[f"aux_n/{label}"] = (src == k).sum()
                stats[f"aux_hi/{label}"] = (hi & (src == k)).sum()
        return {"loss": loss, "logits": logits, "stats": stats}

    def _gate(self, model: nn.Module, x: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        if self.spec.gate != "biamat":
            return gate(torch.zeros(len(xa), device=xa.device), None, self.spec.gate)
        with torch.no_grad(), attack_mode(model, "eval"):
            conf_p, conf_a = confidence(model(x)), confidence(model(xa))
        if self.omega is None or self.spec.omega_mode == "per_batch":
            self.omega = omega_from(conf_p, self.pi)
        return gate(conf_a, self.omega, "biamat")

    def _at_step(self, model, xb, y, ya, hi, alpha, gen):
        """-> (loss, primary logits of the training forward, primary logits on adversarial images)"""
        n_p = len(y)

        def attack_loss(x_adv):  # the plain sum of the per-image terms (no alpha), as in the official code
            lp, la = model.forward_heads(x_adv)
            return torch.cat([F.cross_entropy(lp[:n_p], y, reduction="none"), aux_losses(lp[n_p:], la[n_p:], ya, hi)])

        x_adv = self.attack(model, xb, loss_fn=attack_loss, gen=gen)
        model.train()
        heads = model.forward_heads(x_adv)
        return at_loss(heads, y, ya, hi, alpha), heads[0][:n_p], heads[0][:n_p]

    def _trades_step(self, model, xb, y, ya, hi, alpha, gen):
        n_p = len(y)
        hi_loss = self.hi_loss
        fixed_p, fixed_a = clean_logits(model, xb, self.attack.bn_mode)

        def attack_loss(x_adv):
            ap, aa = model.forward_heads(x_adv)
            aux_hi = F.cross_entropy(aa[n_p:], ya, reduction="none") if hi_loss == "ce" else kl(fixed_a[n_p:], aa[n_p:])
            aux = torch.where(hi, aux_hi, kl(fixed_p[n_p:], ap[n_p:]))
            return torch.cat([kl(fixed_p[:n_p], ap[:n_p]), aux])

        x_adv = self.attack(model, xb, loss_fn=attack_loss, gen=gen, start=trades_start(xb, gen))
        model.train()
        clean, adv = model.forward_heads(xb), model.forward_heads(x_adv)
        loss = trades_loss(clean, adv, y, ya, hi, alpha, self.beta, hi_loss)
        return loss, clean[0][:n_p], adv[0][:n_p]

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        out = super().summarize(sums)
        if self.omega is not None:
            out["biamat/omega"] = float(self.omega)
        if sums.get("aux_n"):
            out["biamat/hi_ratio"] = sums["aux_hi"] / sums["aux_n"]
            if len(self.aux.labels) > 1:
                for label in self.aux.labels:
                    if sums.get(f"aux_n/{label}"):
                        out[f"biamat/hi_ratio/{label}"] = sums[f"aux_hi/{label}"] / sums[f"aux_n/{label}"]
        return out


def _build(ctx: BuildContext) -> Built:
    spec, trial = ctx.trial.method, ctx.trial
    assert isinstance(spec, BiamatSpec)
    aux = load_aux(spec.aux, ctx.data.shape, augmentation(trial.data), ctx.cache, ctx.device, trial.data.root)
    method = Biamat(
        spec,
        ctx.attack,
        aux,
        aux_batch_size=spec.aux_batch_size or trial.train.batch_size,
        hi_loss=spec.resolved_aux_hi_loss(trial.data.dataset),
        seed=trial.seed,
    )
    effective: dict[str, Any] = {
        "method.warmup_epochs": method.warmup_epochs,
        "method.alpha": method.alpha,
        "method.pi": method.pi,
        "method.aux_batch_size": method.aux_batch_size,
        "method.aux_head": aux.n_classes,
        "method.aux_images": len(aux.source),
    }
    if spec.variant == "trades":
        effective |= {"method.beta": method.beta, "method.aux_hi_loss": method.hi_loss}
    summary = (
        f"BiaMAT: {len(aux.source)} auxiliary images from {', '.join(aux.labels)}, {aux.n_classes} auxiliary classes"
    )
    return Built(method, effective, aux_classes=aux.n_classes, summary=summary)


BIAMAT = Kind(BiamatSpec, _build)
