"""Seeded, stratified splits: train/validation, and validation -> select (10 %) / final (90 %); and
reshaping images to another (C, H, W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def reshape(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 images -> the primary's (C, H, W): grey <-> RGB, bilinear resize (antialiased down)."""
    c, h, w = shape
    if tuple(x.shape[1:]) == shape:
        return x
    xf = x.float()
    if xf.shape[1] != c:
        xf = xf.mean(1, keepdim=True).expand(-1, c, -1, -1) if c in (1, 3) else xf[:, :1].expand(-1, c, -1, -1)
    if xf.shape[2:] != (h, w):
        out = []
        for i in range(0, len(xf), 1024):  # in chunks: a whole dataset at once can be large
            out.append(
                F.interpolate(xf[i : i + 1024], size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            )
        xf = torch.cat(out)
    return xf.round().clamp(0, 255).to(torch.uint8)
