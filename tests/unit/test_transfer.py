"""SAT's transfer setting: a source's frozen backbone under a new head trained with clean data."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from satune.cli import app
from satune.data import DataError, load_data
from satune.specs import DataSpec, parse_trial
from satune.trial import load_folder, run_trial

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    done = CliRunner().invoke(
        app, ["run", str(ROOT / "sweeps" / "smoke.yaml"), "--set", "train.epochs=1", "--out", str(folder)]
    )
    assert done.exit_code == 0, done.output
    return folder


def transfer(source, **data):
    return parse_trial(
        {
            "data": {"dataset": "digits", "classes": [0, 1, 2, 3, 4], **data},
            "threat": {"norm": "linf", "eps": 0.1, "steps": 3},
            "method": {"kind": "transfer", "source": str(source), "hidden": 32},
            "train": {"epochs": 2, "batch_size": 64},
            "eval": {"pgd_steps": 3, "autoattack": {"n": 0}},
            "runtime": {"threads": 1},
        }
    )


def test_the_backbone_stays_bit_identical_and_only_the_head_learns(source):
    before = load_folder(str(source)).state
    result = run_trial(transfer(source))
    state = result.model.state_dict()
    after = {k.removeprefix("source."): v for k, v in state.items() if k.startswith("source.")}
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(after[k].cpu(), before[k])]
    assert changed == []  # weights and BatchNorm's running statistics alike
    assert state["head.2.weight"].shape == (5, 32)  # a new head for the 5 target classes
    assert result.metrics["eval/clean_acc"] > 0.5  # the frozen features carry over to the new task
    assert result.effective["source.method.kind"] == "sat" and result.effective["method.hidden"] == 32


def test_a_source_of_another_shape_says_how_to_resize(source):
    with pytest.raises(
        DataError, match=r"the source model takes 1x8x8 images, this data is 1x16x16 \(set trial.data.resize: 8\)"
    ):
        run_trial(transfer(source, resize=16))


def test_tensor_sets_can_be_resized(tmp_path):
    data = load_data(DataSpec(dataset="digits", resize=16), tmp_path, torch.device("cpu"))
    assert data.shape == (1, 16, 16) and data.final.tensors()[0].shape[1:] == (1, 16, 16)
