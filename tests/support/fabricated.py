"""Small data sets in the exact on-disk formats satune reads for users, with fabricated contents.

CIFAR-10 and CIFAR-100 as torchvision's python pickles (`cifar-10-batches-py/`, `cifar-100-python/`),
SVHN as its MATLAB `.mat` files, and an ImageFolder tree of PNGs: what a user puts under `data.root`
(docs/data.md). The loading code under test is the one users run; only torchvision's MD5 check is
bypassed (fabricated files cannot match the published checksums): in-process with
`bypass_checksums()`, in Ray's workers by putting `tests/support/checksum_bypass` (a sitecustomize) on
PYTHONPATH.

Every image of class c is class c's template plus noise, so a model can learn the classes and a
label read in the wrong order shows up as a wrong label, not as noise.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from satune.specs.names import CIFAR10_CLASSES, CIFAR100_CLASSES

BYPASS = Path(__file__).resolve().parent / "checksum_bypass"


def images(n: int, classes: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, size, size) uint8 images and int64 labels, every class present (round robin)."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (classes, 3, size, size))
    y = np.arange(n) % classes
    rng.shuffle(y)
    noise = rng.integers(-40, 41, (n, 3, size, size))
    x = np.clip(templates[y] + noise, 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the published files are Python 2 pickles


def cifar10(root: Path, n_train: int = 100, n_test: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """`root/cifar-10-batches-py/`: five training batches, a test batch and batches.meta, as published."""
    folder = root / "cifar-10-batches-py"
    tx, ty = images(n_train, 10, seed)
    vx, vy = images(n_test, 10, seed + 1)
    for i, (bx, by) in enumerate(zip(np.array_split(tx, 5), np.array_split(ty, 5), strict=True), start=1):
        _pickle(folder / f"data_batch_{i}", _cifar_batch(f"training batch {i} of 5", bx, by, "labels"))
    _pickle(folder / "test_batch", _cifar_batch("testing batch 1 of 1", vx, vy, "labels"))
    _pickle(
        folder / "batches.meta",
        {"num_cases_per_batch": len(tx) // 5, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072},
    )
    return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}


def cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 10) -> dict[str, np.ndarray]:
    """`root/cifar-100-python/`: train, test and meta (fine and coarse labels), as published."""
    folder = root / "cifar-100-python"
    tx, ty = images(n_train, 100, seed)
    vx, vy = images(n_test, 100, seed + 1)
    for name, x, y in (("train", tx, ty), ("test", vx, vy)):
        batch = _cifar_batch(name, x, y, "fine_labels")
        batch["coarse_labels"] = [int(c) // 5 for c in y]
        _pickle(folder / name, batch)
    _pickle(
        folder / "meta",
        {"fine_label_names": list(CIFAR100_CLASSES), "coarse_label_names": [f"superclass_{i}" for i in range(20)]},
    )
    return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}


def _cifar_batch(label: str, x: np.ndarray, y: np.ndarray, key: str) -> dict:
    # Rows of 3072 bytes: the red plane, then green, then blue, each row-major (the published layout).
    return {
        "batch_label": label,
        key: [int(c) for c in y],
        "data": x.reshape(len(x), -1),
        "filenames": [f"fabricated_{i}.png" for i in range(len(x))],
    }


def svhn(root: Path, n_train: int = 100, n_test: int = 40, seed: int = 20) -> dict[str, np.ndarray]:
    """`root/train_32x32.mat` and `root/test_32x32.mat`: X as (32, 32, 3, N), y as (N, 1) with digit 0
    stored as 10, as published."""
    from scipy.io import savemat

    out = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = images(n, 10, s)
        root.mkdir(parents=True, exist_ok=True)
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y)[:, None]})
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


def image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 4, size: int = 40, seed: int = 30
) -> Path:
    """`root/train/<class>/*.png` and `root/val/<class>/*.png` (torchvision's ImageFolder layout)."""
    from PIL import Image

    for split, s in (("train", seed), ("val", seed + 1)):
        x, y = images(per_class * len(classes), len(classes), s, size)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
    return root


def bypass_checksums() -> None:
    """Let torchvision read fabricated CIFAR and SVHN files in this process (only the MD5 check goes)."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn

    for module in (cifar, svhn):
        module.check_integrity = _any_checksum


def _any_checksum(fpath, md5=None) -> bool:
    return Path(fpath).is_file()
