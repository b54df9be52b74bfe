"""Seeded, stratified splits: train/validation, and validation -> select (10 %) / final (90 %)."""

from __future__ import annotations

import torch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out): round(fraction * N) held out, every class in proportion
    (largest remainders get the leftover), each class's members chosen by a seeded permutation."""
    g = _gen(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    quota = fraction * counts.double()
    take = quota.floor().long()
    leftover = round(fraction * len(labels)) - int(take.sum())
    if leftover > 0:
        take[torch.argsort(quota - take, descending=True, stable=True)[:leftover]] += 1
    kept, held = [], []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        held.append(idx[:k])
        kept.append(idx[k:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def select_final(n: int, select_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SAT's protocol: permute the validation set with a fixed seed; the first share selects
    checkpoints, the rest (all of it, not SAT's off-by-1000 slice) gives the final numbers."""
    perm = torch.randperm(n, generator=_gen(seed))
    k = max(1, round(select_fraction * n))
    return perm[:k], perm[k:]


def restrict_classes(
    x: torch.Tensor, y: torch.Tensor, names: tuple[str, ...], keep: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only the classes in `keep`, relabelled 0..k-1 in the order given."""
    old = torch.tensor([names.index(c) for c in keep])
    mask = torch.isin(y, old)
    remap = torch.full((len(names),), -1, dtype=torch.int64)
    remap[old] = torch.arange(len(keep))
    return x[mask], remap[y[mask]]
