import pytest
import torch

from satune.data import load_data
from satune.data.catalog import DataError, load_raw
from satune.data.sources import augment
from satune.data.splits import restrict_classes, select_final, stratified_split
from satune.specs import DataSpec


@pytest.fixture
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "satune-cache"


def test_stratified_split_holds_out_every_class_and_is_seeded():
    y = torch.arange(10).repeat_interleave(50)
    kept, held = stratified_split(y, 0.2, seed=3)
    assert len(held) == 100 and len(kept) == 400
    assert torch.bincount(y[held]).tolist() == [10] * 10
    assert set(kept.tolist()).isdisjoint(held.tolist())
    again, _ = stratified_split(y, 0.2, seed=3)
    other, _ = stratified_split(y, 0.2, seed=4)
    assert torch.equal(kept, again) and not torch.equal(kept, other)


def test_select_and_final_slices_partition_the_validation_set():
    sel, fin = select_final(1000, 0.1, 90622)
    assert len(sel) == 100 and len(fin) == 900  # the whole rest, not SAT's 8 000-point slice
    assert sorted(torch.cat([sel, fin]).tolist()) == list(range(1000))


def test_digits_bundle(cache):
    b = load_data(DataSpec(dataset="digits"), cache, torch.device("cpu"))
    assert b.shape == (1, 8, 8) and b.classes == tuple("0123456789")
    assert len(b.train) + len(b.select) + len(b.final) == 1797
    x, y, idx = next(b.train.batches(32, torch.Generator().manual_seed(0)))
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(b.train.y[idx], y)  # every example carries its index into the training set


def test_stratified_split_hits_the_exact_size():
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    for fraction in (0.1, 0.33, 0.5, 0.9):
        kept, held = stratified_split(y, fraction, seed=0)
        assert len(held) == round(fraction * 15) and len(kept) + len(held) == 15


def test_mnist5k_is_cached_as_npy(cache):
    b = load_data(DataSpec(dataset="mnist5k"), cache, torch.device("cpu"))
    assert (cache / "mnist5k_x.npy").exists()
    assert b.shape == (1, 28, 28) and len(b.train) == 4000 and len(b.final) == 900


def test_class_restriction_relabels_in_the_given_order(cache):
    b = load_data(DataSpec(dataset="digits", classes=[7, 2]), cache, torch.device("cpu"))
    assert b.classes == ("7", "2") and set(b.train.y.tolist()) == {0, 1}
    x = torch.zeros(4, 1, 1, 1)
    xs, ys = restrict_classes(x, torch.tensor([2, 7, 3, 7]), tuple("0123456789"), ("7", "2"))
    assert ys.tolist() == [1, 0, 0]


def test_train_size_takes_a_stratified_subset(cache):
    b = load_data(DataSpec(dataset="digits", train_size=200), cache, torch.device("cpu"))
    assert len(b.train) == 200
    assert torch.bincount(b.train.y).min() >= 18


def test_training_batches_are_reproducible_and_cover_the_set(cache):
    b = load_data(DataSpec(dataset="digits"), cache, torch.device("cpu"))
    first = [idx for _, _, idx in b.train.batches(100, torch.Generator().manual_seed(1))]
    again = [idx for _, _, idx in b.train.batches(100, torch.Generator().manual_seed(1))]
    assert all(torch.equal(a, c) for a, c in zip(first, again, strict=True))
    assert sorted(torch.cat(first).tolist()) == list(range(len(b.train)))


@pytest.mark.parametrize("kind", ["crop", "crop_flip", "sat"])
def test_augmentation_is_seeded_and_keeps_the_box(kind):
    x = torch.rand(8, 3, 32, 32)
    a = augment(x, kind, torch.Generator().manual_seed(0))
    b = augment(x, kind, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)


def test_torchvision_set_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"trial.data.root: cannot read cifar10 from .*download: true"):
        load_raw(DataSpec(dataset="cifar10", root=str(tmp_path)), tmp_path)


def test_imagefolder_layout_is_checked(tmp_path):
    with pytest.raises(DataError, match="ImageFolder layout"):
        load_data(DataSpec(dataset="imagefolder", root=str(tmp_path)), tmp_path, torch.device("cpu"))


def test_imagefolder_reads_train_and_val(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("ant", "bee"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20, 20), (i * 40, 0, 200 if c == "bee" else 0)).save(
                    tmp_path / split / c / f"{i}.png"
                )
    b = load_data(DataSpec(dataset="imagefolder", root=str(tmp_path), image_size=16), tmp_path, torch.device("cpu"))
    assert b.classes == ("ant", "bee") and b.shape == (3, 16, 16)
    x, y, idx = next(b.train.batches(4, torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 16, 16) and len(b.select) + len(b.final) == 8
    # labels follow the folders: bee images are the blue ones, in training and in validation
    assert torch.equal(y, (x[:, 2].mean((1, 2)) > 0.5).long()) and torch.equal(b.train.labels[idx], y)
    vx, vy = b.final.tensors()
    assert torch.equal(vy, (vx[:, 2].mean((1, 2)) > 0.5).long())
