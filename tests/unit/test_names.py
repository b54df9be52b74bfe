"""One source of truth per name table: whatever a sweep file may name, the code builds, and
nothing else. A method kind is whole: its spec class in the union, its registration in
methods.KINDS, and the metrics its spec promises are exactly those a tiny real trial reports."""

import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from satune import models
from satune.cli import app
from satune.data import catalog
from satune.methods import KINDS
from satune.specs import (
    AUX_CLASSES,
    DATASET_CLASSES,
    DOMAIN_KINDS,
    METHOD_KINDS,
    METHOD_SPECS,
    AlgorithmName,
    ArchName,
    AuxDatasetName,
    DatasetName,
    MethodSpecBase,
    parse_trial,
    reported_metrics,
)
from satune.trial import run_trial
from satune.tune import space

ROOT = Path(__file__).resolve().parents[2]


def names(literal) -> set[str]:
    return set(typing.get_args(literal))


def test_architectures():
    assert names(ArchName) == set(models.ARCHITECTURES)


def test_datasets_and_auxiliary_sources():
    assert names(DatasetName) == set(DATASET_CLASSES) == set(catalog.LOADERS) | {"imagefolder"}
    assert names(AuxDatasetName) == set(catalog.LOADERS) | {"noise"} == set(AUX_CLASSES) - {"imagefolder"}


def test_search_algorithms_and_domains():
    assert names(AlgorithmName) == set(space._samplers()) | {"grid"}  # grid: Tune's own
    assert set(DOMAIN_KINDS) == set(space._distributions()) | {"grid"}


def test_every_method_kind_is_whole():
    def subclasses(c):
        return {s for d in c.__subclasses__() for s in {d} | subclasses(d)}

    assert subclasses(MethodSpecBase) == set(METHOD_SPECS), "a method spec class is missing from MethodSpec"
    assert set(KINDS) == set(METHOD_KINDS), "a method kind has no implementation in satune.methods.KINDS"
    assert all(KINDS[k].spec.model_fields["kind"].default == k for k in KINDS)


def tiny(method: dict, **over) -> dict:
    return {
        "data": {"dataset": "digits", "train_size": 200},
        "threat": {"norm": "linf", "eps": 0.1, "steps": 1},
        "method": method,
        "train": {"epochs": 2, "batch_size": 64},
        "eval": {"pgd_steps": 1, "n": 150, "autoattack": {"version": "custom", "attacks": ["apgd-ce"], "n": 80}},
        "runtime": {"threads": 1},
        **over,
    }


TINY = {
    "clean": tiny({"kind": "clean"}),
    "at": tiny({"kind": "at"}),
    "sat-example": tiny({"kind": "sat", "fraction": 0.3, "ranking": "entropy_hardest", "ranking_epochs": 1}),
    "sat-class": tiny({"kind": "sat", "split": "class", "fraction": 0.3, "ranking": "random"}),
    "trades": tiny({"kind": "trades"}),
    "biamat-at": tiny(
        {"kind": "biamat", "aux": ["noise", {"dataset": "noise", "name": "noise2"}], "warmup_epochs": 1},
        data={"dataset": "digits", "classes": [0, 1, 2, 3, 4]},
    ),
    "biamat-trades": tiny(
        {"kind": "biamat", "aux": "mnist5k[5-9]", "variant": "trades", "warmup_epochs": 1, "gate": "naive"},
        data={"dataset": "digits", "classes": [0, 1, 2, 3, 4]},
    ),
    "transfer": tiny({"kind": "transfer", "source": "(the source fixture)"}),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained trial for the transfer kind to start from: a `satune run` folder."""
    folder = tmp_path_factory.mktemp("source")
    done = CliRunner().invoke(
        app, ["run", str(ROOT / "sweeps" / "smoke.yaml"), "--set", "train.epochs=1", "--out", str(folder)]
    )
    assert done.exit_code == 0, done.output
    return str(folder)


def test_the_tiny_trials_cover_every_kind():
    assert {t["method"]["kind"] for t in TINY.values()} == set(METHOD_KINDS)


@pytest.mark.parametrize("name", TINY)
def test_a_kind_reports_exactly_the_metrics_its_spec_promises(name, source):
    spec = parse_trial(TINY[name] | ({"method": {"kind": "transfer", "source": source}} if name == "transfer" else {}))
    if spec.method.preparation() is not None:
        assert KINDS[spec.method.kind].prepare is not None, "the spec asks for a preparation the kind lacks"
    result = run_trial(spec)
    produced = set(result.metrics) | {k for row in result.history for k in row if k != "epoch"}
    promised = reported_metrics(spec)
    assert produced == promised, (sorted(produced - promised), sorted(promised - produced))
