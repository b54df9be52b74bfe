"""GPU paths: run where CUDA exists, skipped elsewhere (the CPU suite covers the logic)."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from satune.attacks import Attack
from satune.cli import app
from satune.models import create_model
from satune.specs import ModelSpec, parse_trial
from satune.train import CHECKPOINT_FILE
from satune.trial import load_folder, run_trial

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def trial(**runtime):
    return parse_trial(
        {
            "data": {"dataset": "digits"},
            "threat": {"norm": "linf", "eps": 0.1, "steps": 3},
            "method": {"kind": "sat", "fraction": 0.5, "ranking": "random"},
            "train": {"epochs": 2, "batch_size": 64},
            "eval": {"pgd_steps": 5, "autoattack": {"n": 50, "version": "custom", "attacks": ["apgd-ce"]}},
            "runtime": {"device": "cuda", **runtime},
        }
    )


def test_trial_runs_on_cuda():
    result = run_trial(trial())
    assert next(result.model.parameters()).is_cuda
    assert 0 < result.metrics["eval/clean_acc"] <= 1 and "eval/aa_acc" in result.metrics
    assert 0 < result.metrics["gpu/peak_mib"] < torch.cuda.get_device_properties(0).total_memory / 2**20


def test_trial_runs_with_bfloat16_autocast():
    result = run_trial(trial(amp=True))
    assert result.metrics["eval/clean_acc"] > 0.5
    assert result.effective["runtime.amp"] is torch.cuda.is_bf16_supported()


def test_convolutions_run_channels_last_on_cuda_by_default():
    result = run_trial(trial())
    convs = [p for p in result.model.parameters() if p.dim() == 4]
    assert result.effective["runtime.channels_last"] is True
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    off = run_trial(trial(channels_last=False))
    assert off.effective["runtime.channels_last"] is False
    assert off.metrics["eval/clean_acc"] > 0.5 and result.metrics["eval/clean_acc"] > 0.5


def test_cuda_runs_are_repeatable():
    a, b = run_trial(trial()), run_trial(trial())
    assert a.metrics["eval/pgd_acc"] == b.metrics["eval/pgd_acc"]


def test_cuda_resume_continues_identically(tmp_path):
    """A trial checkpointed on CUDA resumes on CUDA and ends bit-identically (Ray restarts, --resume)."""
    full = run_trial(trial(), workdir=tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop_after_first(metrics, checkpoint):
        assert (checkpoint / CHECKPOINT_FILE).exists()
        raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(trial(), on_epoch=stop_after_first, workdir=tmp_path / "cut")
    torch.manual_seed(12345)
    resumed = run_trial(trial(), checkpoint=tmp_path / "cut" / "checkpoint", workdir=tmp_path / "resumed")
    assert resumed.metrics["eval/pgd_acc"] == full.metrics["eval/pgd_acc"]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_attack_follows_the_models_device():
    model = create_model(ModelSpec(), (1, 8, 8), [10], [0.3], [0.3]).cuda()
    x, y = torch.rand(8, 1, 8, 8, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    x_adv = Attack("l2", 0.5, 0.2, 3, random_start=True)(model, x, y, gen=torch.Generator().manual_seed(0))
    assert x_adv.is_cuda and ((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()


def test_transfer_from_a_cuda_trained_source_keeps_its_backbone_on_cuda(tmp_path):
    """The source's weights are saved from CUDA and loaded on the CPU first; the transfer trial
    must move the frozen backbone to the GPU with its head, and leave it untouched."""
    source = tmp_path / "source"
    done = CliRunner().invoke(
        app,
        [
            "run",
            str(ROOT / "sweeps" / "smoke.yaml"),
            "--set",
            "train.epochs=1",
            "--set",
            "runtime.device=cuda",
            "--out",
            str(source),
        ],
    )
    assert done.exit_code == 0, done.output
    before = load_folder(str(source)).state
    result = run_trial(
        parse_trial(
            {
                "data": {"dataset": "digits"},
                "threat": {"norm": "linf", "eps": 0.1, "steps": 3},
                "method": {"kind": "transfer", "source": str(source), "hidden": 32},
                "train": {"epochs": 2, "batch_size": 64},
                "eval": {"pgd_steps": 3, "autoattack": {"n": 0}},
                "runtime": {"device": "cuda"},
            }
        )
    )
    state = result.model.state_dict()
    assert all(v.is_cuda for v in state.values())
    assert all(torch.equal(state[f"source.{k}"].cpu(), v) for k, v in before.items())
    assert result.metrics["eval/clean_acc"] > 0.5
