"""Where each torchvision data set's files sit under `root`, and a check that they are there, made
before any compute (reading them takes torch; a missing folder found by the first trial would cost a
GPU allocation). The layout is torchvision's: what `download: true` fetches and unpacks into `root`."""

from __future__ import annotations

from pathlib import Path

from satune.specs.trial import TrialSpec

# dataset -> (folder under root, files in it, what it is)
LAYOUT: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
        "CIFAR-10, python version",
    ),
    "cifar100": ("cifar-100-python", ("train", "test", "meta"), "CIFAR-100, python version"),
    "svhn": ("", ("train_32x32.mat", "test_32x32.mat"), "SVHN, cropped digits"),
    "imagefolder": ("", ("train", "val"), "ImageFolder: train/<class>/<image> and val/<class>/<image>"),
}


def missing(dataset: str, root: str | None) -> str | None:
    """What is missing under `root` for `dataset` (None: all there, or nothing to look for)."""
    if dataset not in LAYOUT or root is None:
        return None
    folder, files, what = LAYOUT[dataset]
    base = Path(root) / folder
    absent = [f for f in files if not (base / f).exists()]
    if not absent:
        return None
    where = f"{base}/" if folder else f"{root}/"
    shown = ", ".join(absent[:3]) + (", ..." if len(absent) > 3 else "")
    return f"{where} lacks {shown} ({what}; docs/data.md says where each set goes)"


def missing_data(trial: TrialSpec) -> list[str]:
    """One line per data set of the trial (primary, then auxiliary) that is not where it is read
    from and will not be downloaded."""
    problems = []
    data = trial.data
    if not data.download and (why := missing(data.dataset, data.root)):
        problems.append(f"trial.data.root: {why}, or set trial.data.download: true")
    for i, aux in enumerate(getattr(trial.method, "aux", None) or []):
        if not aux.download and (why := missing(aux.dataset, aux.root or data.root)):
            problems.append(f"trial.method.aux[{i}].root: {why}, or set trial.method.aux[{i}].download: true")
    return problems
