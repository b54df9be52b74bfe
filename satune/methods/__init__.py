"""Training methods: one object per trial that turns a batch into a loss (see base.Method)."""

from __future__ import annotations

import torch

from satune.attacks import Attack
from satune.data.aux import AuxData
from satune.methods.base import Method, MethodBase
from satune.methods.biamat import Biamat
from satune.methods.sat import SubsetAdversarial, subset_weights
from satune.methods.trades import Trades
from satune.specs import AtSpec, BiamatSpec, CleanSpec, SatSpec, TradesSpec

__all__ = ["Biamat", "Method", "MethodBase", "SubsetAdversarial", "Trades", "build_method", "subset_weights"]


def build_method(
    spec,
    attack: Attack,
    n_train: int,
    device: torch.device,
    in_A: torch.Tensor | None = None,
    aux: AuxData | None = None,
    batch_size: int = 128,
    seed: int = 0,
) -> Method:
    """The method for `spec`. SAT needs `in_A` (A membership per training index); BiaMAT its
    auxiliary data, the primary batch size (the default auxiliary batch) and the trial seed."""
    if isinstance(spec, CleanSpec):
        return SubsetAdversarial(attack, torch.zeros(n_train, dtype=torch.bool, device=device))
    if isinstance(spec, AtSpec):
        return SubsetAdversarial(attack, torch.ones(n_train, dtype=torch.bool, device=device))
    if isinstance(spec, SatSpec):
        if in_A is None:
            raise ValueError("SAT needs its A membership (in_A)")
        w_A, w_B = subset_weights(spec, float(in_A.float().mean()))
        return SubsetAdversarial(attack, in_A.to(device), w_A, w_B)
    if isinstance(spec, TradesSpec):
        return Trades(attack, spec.beta)
    if isinstance(spec, BiamatSpec):
        if aux is None:
            raise ValueError("BiaMAT needs its auxiliary data")
        return Biamat(spec, attack, aux, spec.aux_batch_size or batch_size, seed)
    raise TypeError(f"no method for {type(spec).__name__}")
