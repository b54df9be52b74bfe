import pytest
import torch

from satune.specs import TrainSpec, parse_trial
from satune.train import CHECKPOINT_FILE, lr_factor
from satune.trial import run_trial


def tiny(**over):
    trial = {
        "seed": 1,
        "data": {"dataset": "digits", "train_size": 400},
        "threat": {"norm": "linf", "eps": 0.1, "steps": 2},
        "method": {"kind": "sat", "split": "example", "ranking": "random", "fraction": 0.5, "w_A": 2.0},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.05},
        "eval": {"pgd_steps": 3, "autoattack": {"n": 0}},
        "runtime": {"threads": 1},
    }
    trial.update(over)
    return parse_trial(trial)


def without_times(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_same_seed_gives_bit_identical_metrics():
    a, b = run_trial(tiny()), run_trial(tiny())
    assert without_times(a.history) == without_times(b.history)
    assert without_times([a.metrics]) == without_times([b.metrics])
    c = run_trial(tiny(seed=2))
    assert without_times(c.history) != without_times(a.history)


def test_resume_from_a_checkpoint_continues_identically(tmp_path):
    full = run_trial(tiny(), workdir=tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop_after_two(metrics, checkpoint):
        assert (checkpoint / CHECKPOINT_FILE).exists()
        if metrics["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(tiny(), on_epoch=stop_after_two, workdir=tmp_path / "cut")
    # a run resumed in a fresh process state: scramble the global RNG first
    torch.manual_seed(12345)
    resumed = run_trial(tiny(), checkpoint=tmp_path / "cut" / "checkpoint", workdir=tmp_path / "cut2")
    assert without_times(resumed.history) == without_times(full.history)
    assert without_times([resumed.metrics])[0] | {"time/total_s": 0} == without_times([full.metrics])[0] | {
        "time/total_s": 0
    }
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_checkpoint_selection_keeps_the_best_select_epoch():
    result = run_trial(tiny(train={"epochs": 3, "batch_size": 64, "lr": 0.05}))
    scores = [h["select/pgd_acc"] for h in result.history]
    assert result.metrics["train/selected_epoch"] == scores.index(max(scores))


def test_step_and_cosine_schedules():
    spec = TrainSpec(epochs=10, schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    assert [round(lr_factor(spec, e), 6) for e in (0, 4, 5, 7, 8, 9)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    cos = TrainSpec(epochs=4, schedule="cosine")
    assert lr_factor(cos, 0) == 1 and lr_factor(cos, 2) == pytest.approx(0.5)


def test_grad_evals_count_input_gradients():
    result = run_trial(tiny())
    # half of 400 examples attacked with 2 steps, for 3 epochs; the dropped single-example batch aside
    assert result.metrics["train/grad_evals"] == pytest.approx(3 * 200 * 2, rel=0.02)
    assert result.history[-1]["train/attacked_fraction"] == pytest.approx(0.5, abs=0.01)
