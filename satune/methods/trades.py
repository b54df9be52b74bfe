"""TRADES (Zhang et al., ICML 2019): CE on clean inputs + beta * KL(p(x) || p(x')), where x'
maximises that KL from a start at x + 0.001 * N(0, I). The KL pieces are shared with BiaMAT."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from satune.attacks import Attack, attack_mode
from satune.methods.base import BuildContext, Built, Kind, MethodBase, batch_sums
from satune.models import Net
from satune.runtime import to_device
from satune.specs import TradesSpec


def kl(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """Per-example KL(softmax(clean) || softmax(adv))."""
    logp = F.log_softmax(clean_logits, dim=1)
    return (logp.exp() * (logp - F.log_softmax(adv_logits, dim=1))).sum(1)


def trades_start(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    return 0.001 * to_device(torch.randn(x.shape, generator=gen, dtype=x.dtype), x.device)


def clean_logits(model: nn.Module, x: torch.Tensor, bn_mode: str) -> list[torch.Tensor]:
    """Every head's logits on clean inputs, fixed (no gradient), in the attack's BN mode."""
    with torch.no_grad(), attack_mode(model, bn_mode):
        return [z.detach() for z in cast(Net, model).forward_heads(x)]


class Trades(MethodBase):
    def __init__(self, attack: Attack, beta: float):
        self.attack, self.beta = attack, beta

    def step(self, model: nn.Module, x, y, idx, gen) -> dict:
        fixed = clean_logits(model, x, self.attack.bn_mode)[0]

        def loss_fn(x_adv):
            return kl(fixed, model(x_adv))

        x_adv = self.attack(model, x, loss_fn=loss_fn, gen=gen, start=trades_start(x, gen))
        model.train()
        logits, adv_logits = model(x), model(x_adv)
        loss = F.cross_entropy(logits, y) + self.beta * kl(logits, adv_logits).mean()
        stats = batch_sums(loss, logits, y, adv_logits, None, len(y) * self.attack.steps)
        return {"loss": loss, "logits": logits, "stats": stats}


def _build(ctx: BuildContext) -> Built:
    spec = ctx.trial.method
    assert isinstance(spec, TradesSpec)
    return Built(Trades(ctx.attack, spec.beta), {"method.beta": spec.beta})


TRADES = Kind(TradesSpec, _build)
