"""What every training method provides to the loop (the loop never branches on the method's kind),
and what a method kind registers: how it is built for a trial, what a sweep prepares once for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from satune.attacks import Attack
from satune.data import DataBundle
from satune.specs import MethodSpecBase, TrialSpec


class Method(Protocol):
    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> dict:
        """One batch -> {"loss": scalar to minimise, "logits": primary logits (n, C), "stats": sums}.

        `stats` holds per-batch sums (numbers, or tensors on the device: `batch_sums`) the loop adds
        up over an epoch and hands to `summarize` as floats: n, loss_sum, correct, attacked,
        adv_correct, grad_evals (input-gradient evaluations, examples x steps), plus any
        method-specific sums.
        """
        ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Epoch sums -> metrics named as in docs/sweep-file.md#metric-names (train/*, method/*)."""
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


def batch_sums(
    loss: torch.Tensor,
    logits: torch.Tensor,
    y: torch.Tensor,
    adv_logits: torch.Tensor,
    attacked: torch.Tensor | None,
    grad_evals: int,
) -> dict:
    """The sums every method reports for a batch. Counts that depend on the data stay tensors on the
    device: the loop reads them once per epoch, where an `.item()` per step would make the host wait
    for the GPU at every step. `attacked`: which examples `adv_logits` scores (None: all)."""
    hit = correct(adv_logits.detach(), y)
    return {
        "n": len(y),
        "loss_sum": loss.detach().float() * len(y),
        "correct": correct(logits.detach(), y).sum(),
        "attacked": len(y) if attacked is None else attacked.sum(),
        "adv_correct": hit.sum() if attacked is None else (hit & attacked).sum(),
        "grad_evals": grad_evals,
    }


# --------------------------------------------------------------------------------------------
# A method kind: one spec class (satune/specs/methods.py), one module here, one line in KINDS.


@dataclass(frozen=True)
class BuildContext:
    """What building a trial's method may use."""

    trial: TrialSpec
    data: DataBundle
    attack: Attack
    device: torch.device
    cache: Path  # rankings, embedded data, auxiliary sets
    scores: Callable[[], torch.Tensor]  # SAT's difficulty scores, computed (or read from the cache) on demand
    source: Callable[[str], Source]  # a trained model (a transfer's source): its result file and weights


@dataclass(frozen=True)
class Source:
    """A trained trial: its result file (spec, effective values, metrics) and selected weights."""

    result: dict[str, Any]
    state: dict[str, torch.Tensor]


@dataclass
class Built:
    """A built method, and what the trial needs from it."""

    method: Method
    effective: dict[str, Any] = field(default_factory=dict)  # the values it trains with, defaults resolved
    aux_classes: int = 0  # size of a second (auxiliary) head; 0: none
    a_classes: list[int] | None = None  # a class split's A, for A_val / B_val accuracies
    summary: str | None = None  # one line for the log
    model: nn.Module | None = None  # the model to train, when the kind brings its own (else create_model's)


@dataclass(frozen=True)
class Kind:
    spec: type[MethodSpecBase]
    build: Callable[[BuildContext], Built]
    prepare: Callable[[BuildContext], None] | None = None  # what every trial of a sweep shares, computed once
    # The trained model from its result file and weights, when it is not create_model's (evaluations later).
    rebuild: Callable[[dict[str, Any], dict[str, torch.Tensor]], nn.Module] | None = None

    @property
    def name(self) -> str:
        return self.spec.model_fields["kind"].default
