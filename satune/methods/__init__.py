"""Training methods: one object per trial that turns a batch into a loss (see base.Method).

A method kind is one spec class (satune/specs/methods.py), one module here with its Kind, and one
entry in KINDS below; tests/unit/test_names.py fails when any of the three is missing.
"""

from __future__ import annotations

from satune.methods.base import BuildContext, Built, Kind, Method, MethodBase, Source
from satune.methods.biamat import BIAMAT, Biamat
from satune.methods.sat import AT, CLEAN, SAT, SubsetAdversarial, subset_weights
from satune.methods.trades import TRADES, Trades
from satune.methods.transfer import TRANSFER
from satune.specs import MethodSpecBase

KINDS: dict[str, Kind] = {k.name: k for k in (CLEAN, AT, SAT, TRADES, BIAMAT, TRANSFER)}


def kind_of(spec: MethodSpecBase) -> Kind:
    return KINDS[spec.kind]


__all__ = [
    "KINDS",
    "Biamat",
    "BuildContext",
    "Built",
    "Kind",
    "Method",
    "MethodBase",
    "SubsetAdversarial",
    "Source",
    "Trades",
    "kind_of",
    "subset_weights",
]
