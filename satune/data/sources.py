"""Batch sources. Every training batch is (x in [0,1], y, index): ESAT needs each example's index.

`TensorSource` keeps a whole split as one uint8 tensor on the trial's device and augments batches
with torch ops whose random parameters come from the caller's generator: the same generator gives
the same batches on every run, which is what a bit-exact resume needs. `FolderSource` streams an
image folder that does not fit in memory through a DataLoader.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from satune.runtime import to_device

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TensorSource:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: str = "none"):
        self.x = x  # uint8 (N, C, H, W)
        self.y = y
        self.augment = augment

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> torch.Tensor:
        return self.y.cpu()

    def to(self, device: torch.device) -> TensorSource:
        return TensorSource(self.x.to(device), self.y.to(device), self.augment)

    def batches(self, batch_size: int, gen: torch.Generator | None = None) -> Iterator[Batch]:
        """Shuffled when `gen` is given (training), in order otherwise. A last batch of a single
        example is dropped: BatchNorm cannot train on it."""
        n = len(self)
        order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
        order = order.to(self.x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if gen is not None and len(idx) < 2:
                break
            x = self.x[idx].float().div_(255)
            if gen is not None and self.augment != "none":
                x = augment(x, self.augment, gen)
            yield x, self.y[idx], idx

    def tensors(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` examples (all by default) as float images in [0,1] and labels."""
        x, y = (self.x, self.y) if n is None else (self.x[:n], self.y[:n])
        return x.float().div(255), y


class FolderSource:
    """An ImageFolder read through a DataLoader; transforms apply per image in worker processes."""

    def __init__(self, dataset, num_workers: int = 0):
        self.dataset = dataset
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor(self.dataset.targets, dtype=torch.int64)

    def batches(self, batch_size: int, gen: torch.Generator | None = None) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        loader: DataLoader[Batch] = DataLoader(
            _Indexed(self.dataset),
            batch_size=batch_size,
            shuffle=gen is not None,
            generator=gen,  # also seeds the workers, so batches are reproducible
            num_workers=self.num_workers,
            drop_last=False,
        )
        for x, y, idx in loader:
            if gen is not None and len(idx) < 2:
                break
            yield x, y, idx


class _Indexed(torch.utils.data.Dataset[Batch]):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Batch:
        x, y = self.dataset[i]
        return x, torch.tensor(y), torch.tensor(i)


# --------------------------------------------------------------------------------------------
# Batched augmentation with per-example random parameters drawn from one CPU generator.


def augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """`crop`: pad 4 + random crop (SVHN); `crop_flip`: + horizontal flip (CIFAR);
    `sat`: + brightness/contrast/saturation jitter 0.25 and rotation within +-2 degrees (SAT's recipe)."""
    x = random_crop(x, 4, gen)
    if kind in ("crop_flip", "sat"):
        x = random_flip(x, gen)
    if kind == "sat":
        x = color_jitter(x, 0.25, gen)
        x = random_rotation(x, 2.0, gen)
    return x


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return to_device(torch.rand(n, generator=gen) * (high - low) + low, device)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = to_device(torch.randint(0, 2 * pad + 1, (n,), generator=gen), x.device)
    ox = to_device(torch.randint(0, 2 * pad + 1, (n,), generator=gen), x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = to_device(torch.rand(len(x), generator=gen) < 0.5, x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    n = len(x)
    b, c, s = (_uniform(n, 1 - strength, 1 + strength, gen, x.device)[:, None, None, None] for _ in range(3))
    x = (x * b).clamp(0, 1)
    gray = _gray(x)
    x = ((x - gray.mean((2, 3), keepdim=True)) * c + gray.mean((2, 3), keepdim=True)).clamp(0, 1)
    if x.shape[1] == 3:
        gray = _gray(x)
        x = ((x - gray) * s + gray).clamp(0, 1)
    return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def random_rotation(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    angle = _uniform(len(x), -degrees, degrees, gen, x.device) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
