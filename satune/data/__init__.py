"""Datasets for trials: a training source (with indices) and the select / final validation slices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from satune.data.catalog import DataError, load_raw
from satune.data.sources import FolderSource, TensorSource
from satune.data.splits import reshape, restrict_classes, select_final, stratified_split
from satune.specs import DataSpec

__all__ = ["DataBundle", "DataError", "load_data", "TensorSource", "FolderSource"]

_AUTO_AUGMENT = {"cifar10": "crop_flip", "cifar100": "crop_flip", "svhn": "crop", "imagefolder": "crop_flip"}


@dataclass
class DataBundle:
    train: TensorSource | FolderSource
    select: TensorSource  # checkpoint selection (first share of the permuted validation set)
    final: TensorSource  # final numbers (the rest)
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per-channel statistics of the training images, for the model's input layer
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def augmentation(spec: DataSpec) -> str:
    return _AUTO_AUGMENT.get(spec.dataset, "none") if spec.augment == "auto" else spec.augment


def load_data(spec: DataSpec, cache: Path, device: torch.device) -> DataBundle:
    if spec.dataset == "imagefolder":
        return _load_folder(spec, device)
    raw = load_raw(spec, cache)
    tx, ty, classes = raw.train_x, raw.train_y, raw.classes
    test = None if raw.test_x is None or raw.test_y is None else (raw.test_x, raw.test_y)
    if spec.classes is not None:
        keep = tuple(spec.classes)
        tx, ty = restrict_classes(tx, ty, classes, keep)
        if test is not None:
            test = restrict_classes(*test, classes, keep)
        classes = keep
    if test is None:  # no test split: hold out a stratified share of the training set
        kept, held = stratified_split(ty, spec.val_fraction, spec.split_seed)
        tx, ty, test = tx[kept], ty[kept], (tx[held], ty[held])
    vx, vy = test
    if spec.resize is not None:  # e.g. 8x8 digits for a model trained on 28x28 MNIST
        shape = (tx.shape[1], spec.resize, spec.resize)
        tx, vx = reshape(tx, shape), reshape(vx, shape)
    if spec.train_size is not None and spec.train_size < len(ty):
        _, subset = stratified_split(ty, spec.train_size / len(ty), spec.split_seed + 1)
        tx, ty = tx[subset], ty[subset]
    sel, fin = select_final(len(vy), spec.select_fraction, spec.split_seed)
    mean, std = _stats(tx)
    return DataBundle(
        train=TensorSource(tx, ty, augmentation(spec)).to(device),
        select=TensorSource(vx[sel], vy[sel]).to(device),
        final=TensorSource(vx[fin], vy[fin]).to(device),
        classes=tuple(classes),
        shape=(tx.shape[1], tx.shape[2], tx.shape[3]),
        mean=mean,
        std=std,
    )


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float().div(255).transpose(0, 1).flatten(1)
    return tuple(xf.mean(1).tolist()), tuple(xf.std(1).clamp_min(1e-3).tolist())


def _load_folder(spec: DataSpec, device: torch.device) -> DataBundle:
    """`root/train/<class>/*` and `root/val/<class>/*` (torchvision ImageFolder layout)."""
    from torchvision import datasets, transforms

    assert spec.root is not None  # DataSpec requires one for imagefolder
    root = Path(spec.root)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataError(f"trial.data.root: {root} needs {sub}/<class>/<image> folders (ImageFolder layout)")
    size = spec.image_size
    augment = augmentation(spec)
    train_tf = [transforms.RandomResizedCrop(size)] + ([transforms.RandomHorizontalFlip()] if augment != "none" else [])
    train = datasets.ImageFolder(root / "train", transform=transforms.Compose(train_tf + [transforms.ToTensor()]))
    val_tf = transforms.Compose(
        [transforms.Resize(round(size * 8 / 7)), transforms.CenterCrop(size), transforms.PILToTensor()]
    )
    val = datasets.ImageFolder(root / "val", transform=val_tf)
    classes = tuple(train.classes)
    if spec.classes is not None:
        missing = [c for c in spec.classes if c not in classes]
        if missing:
            raise DataError(f"trial.data.classes: {missing} not found under {root / 'train'}")
        for ds in (train, val):
            _keep_folder_classes(ds, tuple(spec.classes))
        classes = tuple(spec.classes)
    vx = torch.stack([val[i][0] for i in range(len(val))])
    vy = torch.tensor(val.targets, dtype=torch.int64)
    sel, fin = select_final(len(vy), spec.select_fraction, spec.split_seed)
    imagenet_mean, imagenet_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return DataBundle(
        train=FolderSource(train, spec.num_workers),
        select=TensorSource(vx[sel], vy[sel]).to(device),
        final=TensorSource(vx[fin], vy[fin]).to(device),
        classes=classes,
        shape=(3, size, size),
        mean=imagenet_mean,
        std=imagenet_std,
    )


def _keep_folder_classes(ds, keep: tuple[str, ...]) -> None:
    index = {ds.classes[i]: i for i in range(len(ds.classes))}
    remap = {index[c]: j for j, c in enumerate(keep)}
    ds.samples = [(p, remap[t]) for p, t in ds.samples if t in remap]
    ds.targets = [t for _, t in ds.samples]
    ds.imgs = ds.samples
    ds.classes = list(keep)
