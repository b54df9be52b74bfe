"""Subset adversarial training (SAT, Losch et al., ICLR 2024) and its two limits, clean and PGD-AT.

Only the members of A in a batch are attacked (the attack runs on the A sub-batch alone, so its
cost is proportional to |A|); B members are trained clean. The loss is the weighted mean
sum(w_i * CE_i) / sum(w_i) with w_i = w_A for A members and w_B for B members.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from satune.attacks import Attack
from satune.methods.base import BuildContext, Built, Kind, MethodBase, batch_sums
from satune.seeds import derive_seed
from satune.specs import AtSpec, CleanSpec, SatSpec, class_count


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
        # Everyone in A (PGD-AT) or no one (clean training), known once: such steps never wait for the GPU.
        self.everyone, self.no_one = bool(in_A.all()), not bool(in_A.any())

    def step(self, model: nn.Module, x, y, idx, gen) -> dict:
        mask = self.in_A[idx]
        if self.everyone:
            x_in, n_attacked = self.attack(model, x, y, gen=gen), len(y)
        elif self.no_one:
            x_in, n_attacked = x, 0
        else:  # one host sync per step: the attacked subset's size shapes the attack's batch
            where = mask.nonzero().squeeze(1)
            n_attacked = len(where)
            x_in = x
            if n_attacked:
                adv = self.attack(model, x.index_select(0, where), y.index_select(0, where), gen=gen)
                x_in = x.index_copy(0, where, adv)
        model.train()
        logits = model(x_in)
        ce = F.cross_entropy(logits, y, reduction="none")
        w = torch.where(mask, torch.full_like(ce, self.w_A), torch.full_like(ce, self.w_B))
        loss = (w * ce).sum() / w.sum().clamp_min(1e-12)
        stats = batch_sums(loss, logits, y, logits, mask, n_attacked * self.attack.steps)
        return {"loss": loss, "logits": logits, "stats": stats}


# --------------------------------------------------------------------------------------------
# Who is in A: a ranking (by difficulty scores, or random) cut at the fraction, or named classes.


def example_order(scores: torch.Tensor, ranking: str, seed: int) -> torch.Tensor:
    """Training indices, first = first into A."""
    if ranking == "random":
        return torch.randperm(len(scores), generator=torch.Generator().manual_seed(derive_seed(seed, "random-ranking")))
    return torch.argsort(scores, descending=ranking == "entropy_hardest", stable=True)


def class_order(scores: torch.Tensor, labels: torch.Tensor, n_classes: int, ranking: str, seed: int) -> torch.Tensor:
    """Class indices by the mean difficulty of their examples, first = first into A."""
    if ranking == "random":
        return torch.randperm(n_classes, generator=torch.Generator().manual_seed(derive_seed(seed, "random-ranking")))
    means = torch.stack([scores[labels == c].mean() for c in range(n_classes)])
    return torch.argsort(means, descending=ranking == "entropy_hardest", stable=True)


def membership(
    spec: SatSpec, labels: torch.Tensor, classes: tuple[str, ...], scores: Callable[[], torch.Tensor]
) -> tuple[torch.Tensor, list[int] | None]:
    """A: a bool per training index, and the A class indices for a class split (else None).
    `scores` is called only when the ranking needs difficulty scores."""
    n = len(labels)
    ranked = (lambda: torch.zeros(n)) if spec.ranking == "random" else scores
    if spec.split == "class":
        if spec.classes is not None:
            a_classes = [classes.index(c) for c in spec.classes]
        else:
            assert spec.fraction is not None  # a class split has classes or a fraction (SatSpec's rule)
            order = class_order(ranked(), labels, len(classes), spec.ranking, spec.ranking_seed)
            a_classes = order[: class_count(spec.fraction, len(classes))].tolist()
        return torch.isin(labels, torch.tensor(a_classes)), sorted(a_classes)
    assert spec.fraction is not None  # an example split has a fraction (SatSpec's rule)
    order = example_order(ranked(), spec.ranking, spec.ranking_seed)
    in_a = torch.zeros(n, dtype=torch.bool)
    in_a[order[: round(spec.fraction * n)]] = True
    return in_a, None


# --------------------------------------------------------------------------------------------
# The kinds: SAT, and its two limits, clean training (A empty) and PGD-AT (A everything)


def _build_sat(ctx: BuildContext) -> Built:
    spec = ctx.trial.method
    assert isinstance(spec, SatSpec)
    labels = ctx.data.train.labels.cpu()
    in_a, a_classes = membership(spec, labels, ctx.data.classes, ctx.scores)
    w_A, w_B = subset_weights(spec, float(in_a.float().mean()))
    effective: dict[str, Any] = {
        "method.weighting": spec.resolved_weighting,
        "method.w_A": w_A,
        "method.w_B": w_B,
        "method.a_examples": int(in_a.sum()),
    }
    if a_classes is not None:  # by name: an evaluation later finds A_val and B_val with them
        effective["method.a_classes"] = [ctx.data.classes[c] for c in a_classes]
    named = f" (classes {effective['method.a_classes']})" if a_classes else ""
    summary = f"SAT: {int(in_a.sum())} of {len(in_a)} training examples in A{named}, w_A {w_A:.4g}, w_B {w_B:.4g}"
    return Built(
        SubsetAdversarial(ctx.attack, in_a.to(ctx.device), w_A, w_B), effective, a_classes=a_classes, summary=summary
    )


def _prepare_sat(ctx: BuildContext) -> None:
    ctx.scores()  # the difficulty ranking, computed once and cached for every trial


def _everything(attacked: bool):
    def build(ctx: BuildContext) -> Built:
        in_a = torch.full((len(ctx.data.train),), attacked, dtype=torch.bool, device=ctx.device)
        return Built(SubsetAdversarial(ctx.attack, in_a))

    return build


SAT = Kind(SatSpec, _build_sat, _prepare_sat)
CLEAN = Kind(CleanSpec, _everything(False))
AT = Kind(AtSpec, _everything(True))
