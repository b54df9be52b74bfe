"""Subset adversarial training (SAT, Losch et al., ICLR 2024) and its two limits, clean and PGD-AT.

Only the members of A in a batch are attacked (the attack runs on the A sub-batch alone, so its
cost is proportional to |A|); B members are trained clean. The loss is the weighted mean
sum(w_i * CE_i) / sum(w_i) with w_i = w_A for A members and w_B for B members.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from satune.attacks import Attack
from satune.methods.base import MethodBase, correct
from satune.specs import SatSpec


def subset_weights(spec: SatSpec, fraction: float) -> tuple[float, float]:
    """(w_A, w_B) for a weighting scheme, `fraction` = |A| / |A u B| in examples."""
    scheme = spec.resolved_weighting
    if scheme == "custom":
        return (spec.w_A if spec.w_A is not None else 1.0, spec.w_B if spec.w_B is not None else 1.0)
    if scheme == "vanilla" or fraction >= 1.0:  # with B empty only the ratio to nothing remains
        return 1.0, 1.0
    f = max(fraction, 1e-12)
    balanced = (1 - f) / f  # A and B carry equal expected loss mass
    if scheme == "balanced":
        return balanced, 1.0
    return (1 + 10 * f) * balanced, 1.0  # overemphasized: 2x at f=0.1 ... 10x at f=0.9


class SubsetAdversarial(MethodBase):
    def __init__(self, attack: Attack, in_A: torch.Tensor, w_A: float = 1.0, w_B: float = 1.0):
        self.attack = attack
        self.in_A = in_A  # bool per training index, on the training device
        self.w_A, self.w_B = w_A, w_B

    def step(self, model: nn.Module, x, y, idx, gen) -> dict:
        mask = self.in_A[idx]
        n_attacked = int(mask.sum())
        x_in = x
        if n_attacked:
            x_in = x.clone()
            x_in[mask] = self.attack(model, x[mask], y[mask], gen=gen)
        model.train()
        logits = model(x_in)
        ce = F.cross_entropy(logits, y, reduction="none")
        w = torch.where(mask, torch.full_like(ce, self.w_A), torch.full_like(ce, self.w_B))
        loss = (w * ce).sum() / w.sum().clamp_min(1e-12)
        hit = correct(logits.detach(), y)
        stats = {
            "n": len(y),
            "loss_sum": loss.item() * len(y),
            "correct": int(hit.sum()),
            "attacked": n_attacked,
            "adv_correct": int(hit[mask].sum()),
            "grad_evals": n_attacked * self.attack.steps,
        }
        return {"loss": loss, "logits": logits, "stats": stats}
