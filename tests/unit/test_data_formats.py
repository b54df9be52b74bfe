"""satune's loaders on data in the exact on-disk formats users download (tests/support/fabricated.py):
torchvision's CIFAR pickles, SVHN's .mat files, an ImageFolder tree, CIFAR-100 as BiaMAT's auxiliary set.
Images and labels must come back exactly as written, in satune's (N, C, H, W) uint8 layout."""

import fabricated
import numpy as np
import pytest
import torch

from satune.data import DataError, load_data
from satune.data.aux import load_aux
from satune.data.catalog import load_raw
from satune.specs import DataSpec
from satune.specs.methods import AuxSpec
from satune.specs.names import CIFAR10_CLASSES, CIFAR100_CLASSES, DIGITS


@pytest.fixture
def checksums_bypassed():
    """Only torchvision's MD5 check is bypassed: fabricated files cannot match published checksums."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn

    saved = cifar.check_integrity, svhn.check_integrity
    fabricated.bypass_checksums()
    yield
    cifar.check_integrity, svhn.check_integrity = saved


def same(raw_x: torch.Tensor, raw_y: torch.Tensor, x: np.ndarray, y: np.ndarray) -> None:
    assert raw_x.dtype == torch.uint8 and raw_x.shape == x.shape
    assert np.array_equal(raw_x.numpy(), x) and np.array_equal(raw_y.numpy(), y)


def test_torchvision_refuses_fabricated_cifar_without_the_bypass(tmp_path):
    """The loader under test is torchvision's own, checksum included: a user's corrupt file is refused."""
    fabricated.cifar10(tmp_path)
    with pytest.raises(DataError, match=r"trial.data.root: cannot read cifar10 .*set trial.data.download: true"):
        load_raw(DataSpec(dataset="cifar10", root=str(tmp_path)), tmp_path)


@pytest.mark.parametrize(("dataset", "classes"), [("cifar10", CIFAR10_CLASSES), ("cifar100", CIFAR100_CLASSES)])
def test_cifar_pickles_read_as_written(tmp_path, checksums_bypassed, dataset, classes):
    """CIFAR-100's labels are its fine labels (its files carry coarse ones too)."""
    made = getattr(fabricated, dataset)(tmp_path)
    raw = load_raw(DataSpec(dataset=dataset, root=str(tmp_path)), tmp_path)
    same(raw.train_x, raw.train_y, made["train_x"], made["train_y"])
    same(raw.test_x, raw.test_y, made["test_x"], made["test_y"])
    assert raw.classes == classes


def test_svhn_mat_files_read_with_digit_zero_stored_as_ten(tmp_path, checksums_bypassed):
    made = fabricated.svhn(tmp_path)
    raw = load_raw(DataSpec(dataset="svhn", root=str(tmp_path)), tmp_path)
    same(raw.train_x, raw.train_y, made["train_x"], made["train_y"])
    same(raw.test_x, raw.test_y, made["test_x"], made["test_y"])
    assert raw.classes == DIGITS and 0 in raw.train_y and 10 not in raw.train_y


def test_cifar10_trial_data_uses_the_test_split_for_select_and_final(tmp_path, checksums_bypassed):
    fabricated.cifar10(tmp_path, n_train=100, n_test=40)
    spec = DataSpec(dataset="cifar10", root=str(tmp_path), select_fraction=0.25, train_size=50)
    bundle = load_data(spec, tmp_path, torch.device("cpu"))
    assert (len(bundle.train), len(bundle.select), len(bundle.final)) == (50, 10, 30)
    assert bundle.shape == (3, 32, 32) and bundle.classes == CIFAR10_CLASSES
    assert bundle.train.augment == "crop_flip"  # CIFAR's augmentation by default


def test_image_folder_tree_reads_classes_and_crops(tmp_path):
    root = fabricated.image_folder(tmp_path / "pets", per_class=4, size=40)
    spec = DataSpec(dataset="imagefolder", root=str(root), image_size=32, select_fraction=0.5)
    bundle = load_data(spec, tmp_path, torch.device("cpu"))
    assert bundle.classes == ("cat", "dog", "fox") and bundle.shape == (3, 32, 32)
    assert len(bundle.select) + len(bundle.final) == 12
    x, y, idx = next(bundle.train.batches(6, torch.Generator().manual_seed(0)))
    assert x.shape == (6, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1 and len(set(idx.tolist())) == 6


def test_image_folder_without_val_is_refused(tmp_path):
    root = fabricated.image_folder(tmp_path / "pets")
    (root / "val").rename(root / "validation")
    with pytest.raises(DataError, match="needs val/<class>/<image> folders"):
        load_data(DataSpec(dataset="imagefolder", root=str(root)), tmp_path, torch.device("cpu"))


def test_cifar100_as_auxiliary_data_for_cifar10(tmp_path, checksums_bypassed):
    """BiaMAT's recipe: CIFAR-100's training split (never its test split) beside CIFAR-10, from data.root."""
    made = fabricated.cifar100(tmp_path)
    aux = load_aux(
        [AuxSpec(dataset="cifar100")],
        (3, 32, 32),
        "crop_flip",
        tmp_path,
        torch.device("cpu"),
        default_root=str(tmp_path),
    )
    assert aux.n_classes == 100 and aux.labels == ("cifar100",)
    assert len(aux.source) == len(made["train_y"])
    assert np.array_equal(aux.source.x.numpy(), made["train_x"])
    some = AuxSpec(dataset="cifar100", classes=["apple", "bear"], name="two")
    two = load_aux([some], (3, 32, 32), "none", tmp_path, torch.device("cpu"), default_root=str(tmp_path))
    assert two.n_classes == 2 and set(two.source.y.tolist()) == {0, 1}
