"""What every training method provides to the loop; the loop never branches on the method's kind."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn as nn


class Method(Protocol):
    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> dict:
        """One batch -> {"loss": scalar to minimise, "logits": primary logits (n, C), "stats": sums}.

        `stats` holds per-batch sums the loop adds up over an epoch and hands to `summarize`:
        n, loss_sum, correct, attacked, adv_correct, grad_evals (input-gradient evaluations,
        examples x steps), plus any method-specific sums.
        """
        ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Epoch sums -> metrics named as in design.md (train/*, method/*)."""
        ...

    def start_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class MethodBase:
    """Defaults for methods without epoch-dependent behaviour or state of their own."""

    def start_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("n", 0.0), 1.0)
        out = {
            "train/loss": sums.get("loss_sum", 0.0) / n,
            "train/acc": sums.get("correct", 0.0) / n,
            "train/attacked_fraction": sums.get("attacked", 0.0) / n,
        }
        if sums.get("attacked", 0.0) > 0:
            out["train/adv_acc"] = sums["adv_correct"] / sums["attacked"]
        return out


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1) == y
