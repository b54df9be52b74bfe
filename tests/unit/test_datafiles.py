"""The data check made before any compute: torchvision's layout under `root`, primary and auxiliary."""

import fabricated
from typer.testing import CliRunner

from satune.cli import app
from satune.specs import parse_trial
from satune.specs.datafiles import missing, missing_data


def test_the_layout_is_what_the_loaders_read(tmp_path):
    """The same fabricated files that satune's loaders read (test_data_formats.py) pass the check."""
    fabricated.cifar10(tmp_path)
    fabricated.cifar100(tmp_path)
    fabricated.svhn(tmp_path / "svhn")
    fabricated.image_folder(tmp_path / "pets")
    for dataset, root in (
        ("cifar10", tmp_path),
        ("cifar100", tmp_path),
        ("svhn", tmp_path / "svhn"),
        ("imagefolder", tmp_path / "pets"),
    ):
        assert missing(dataset, str(root)) is None, dataset
    assert missing("digits", None) is None  # embedded: nothing to look for


def test_a_missing_file_is_named(tmp_path):
    fabricated.cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    why = missing("cifar10", str(tmp_path))
    assert why is not None and why.startswith(f"{tmp_path}/cifar-10-batches-py/ lacks test_batch (CIFAR-10")


def biamat_trial(primary, **aux):
    return parse_trial(
        {
            "data": {"dataset": "cifar10", "root": str(primary)},
            "threat": {"norm": "linf", "eps": 0.03, "steps": 2},
            "method": {"kind": "biamat", "aux": [{"dataset": "cifar100", **aux}, "noise"]},
        }
    )


def test_auxiliary_sets_are_checked_under_their_root_or_the_primary_one(tmp_path):
    fabricated.cifar10(tmp_path)
    assert missing_data(biamat_trial(tmp_path)) == [
        f"trial.method.aux[0].root: {tmp_path}/cifar-100-python/ lacks train, test, meta (CIFAR-100, python "
        "version; docs/data.md says where each set goes), or set trial.method.aux[0].download: true"
    ]
    assert missing_data(biamat_trial(tmp_path, download=True)) == []
    fabricated.cifar100(tmp_path / "elsewhere")
    assert missing_data(biamat_trial(tmp_path, root=str(tmp_path / "elsewhere"))) == []


def test_a_sweep_without_its_data_exits_2_before_any_compute(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("""
name: no-data
trial:
  data: {dataset: cifar10, root: data}
  threat: {norm: linf, eps: 0.03, steps: 2}
  method: {kind: sat, fraction: 0.5, ranking: random}
search: {algorithm: random, num_samples: 1, space: {method.fraction: {uniform: [0.1, 0.9]}}}
storage: runs
""")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SATUNE_RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(app, ["sweep", str(sweep)])
    assert result.exit_code == 2, result.output
    assert f"error: trial.data.root: {tmp_path}/data/cifar-10-batches-py/ lacks" in result.output
    assert not (tmp_path / "runs").exists()
    dry = CliRunner().invoke(app, ["sweep", str(sweep), "--dry-run"])  # starts nothing: says so, exit 0
    assert dry.exit_code == 0 and f"warning: trial.data.root: {tmp_path}/data/cifar-10-batches-py/ lacks" in dry.output
