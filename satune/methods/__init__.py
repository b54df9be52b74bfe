"""Training methods: one object per trial that turns a batch into a loss (see base.Method)."""

from __future__ import annotations

import torch

from satune.attacks import Attack
from satune.methods.base import Method, MethodBase
from satune.methods.sat import SubsetAdversarial, subset_weights
from satune.specs import AtSpec, CleanSpec, SatSpec

__all__ = ["Method", "MethodBase", "SubsetAdversarial", "build_method", "subset_weights"]


def build_method(spec, attack: Attack, n_train: int, device: torch.device, in_A: torch.Tensor | None = None) -> Method:
    """The method for `spec`. SAT needs `in_A`, its A membership per training index."""
    if isinstance(spec, CleanSpec):
        return SubsetAdversarial(attack, torch.zeros(n_train, dtype=torch.bool, device=device))
    if isinstance(spec, AtSpec):
        return SubsetAdversarial(attack, torch.ones(n_train, dtype=torch.bool, device=device))
    if isinstance(spec, SatSpec):
        if in_A is None:
            raise ValueError("SAT needs its A membership (in_A)")
        w_A, w_B = subset_weights(spec, float(in_A.float().mean()))
        return SubsetAdversarial(attack, in_A.to(device), w_A, w_B)
    raise TypeError(f"no method for {type(spec).__name__}")
