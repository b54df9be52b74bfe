import pytest
import torch

from satune.specs import TrainSpec, parse_trial
from satune.train import CHECKPOINT_FILE, collapsed
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
    selected = int(result.metrics["train/selected_epoch"])
    assert selected == scores.index(max(scores))
    # The proxy is what the check of the selected checkpoint saw, now with its n and interval.
    n = result.effective["data.select_examples"]
    assert result.metrics["proxy/pgd_acc"] == pytest.approx(scores[selected]) and result.metrics["proxy/pgd_n"] == n
    assert result.metrics["proxy/pgd_acc_lo"] < scores[selected] < result.metrics["proxy/pgd_acc_hi"]
    assert result.metrics["proxy/clean_acc"] == pytest.approx(result.history[selected]["select/clean_acc"])


def test_checks_land_after_each_lr_drop_and_never_inside_a_warmup():
    spec = parse_trial(
        {
            "data": {"dataset": "digits"},
            "threat": {"norm": "linf", "eps": 0.1},
            "method": {"kind": "at"},
            "train": {"epochs": 201, "milestones": [0.4975, 0.7462]},
            "eval": {"select_every": 5},
        }
    )
    checks = spec.selection_epochs()
    assert {99, 100, 150, 200} <= set(checks) and 101 not in checks  # SAT's drops: epochs 100 and 150 (0-based)
    assert len(checks) == 40 + 2 + 1  # every 5th (4, 9, ..., 199), the two drops, the last (200)
    biamat = tiny(
        method={"kind": "biamat", "aux": ["noise"], "warmup_epochs": 2},
        train={"epochs": 4, "batch_size": 64, "lr": 0.05},
    )
    assert biamat.selection_epochs() == [2, 3]
    result = run_trial(biamat)
    assert [h["epoch"] for h in result.history if "select/pgd_acc" in h] == [2, 3]
    assert result.metrics["train/selected_epoch"] >= 2 and result.effective["eval.select_epochs"] == [2, 3]


def check(pgd: float, clean: float = 0.9) -> dict:
    return {"select/pgd_acc": pgd, "select/clean_acc": clean}


@pytest.mark.parametrize(
    ("history", "now", "n", "expected"),
    [
        ([check(0.40), check(0.45)], check(0.02), 200, True),  # fast AT's collapse: robust gone, clean kept
        ([check(0.40), check(0.45)], check(0.02, clean=0.1), 200, False),  # everything gone: diverged, not this
        ([check(0.40), check(0.45)], check(0.30), 200, False),  # a dip, not half
        ([check(0.10)], check(0.04), 36, False),  # half of little, on 36 examples: noise
        ([check(0.33)], check(0.14), 36, False),  # on 36 examples the two intervals still overlap
        ([check(0.33)], check(0.14), 400, True),  # the same drop on 400 examples is beyond noise
        ([], check(0.0), 200, False),  # nothing to fall from
    ],
)
def test_collapse_is_robust_accuracy_halved_beyond_noise_with_clean_accuracy_kept(history, now, n, expected):
    assert collapsed(history, now, n) is expected


def test_step_and_cosine_schedules():
    spec = TrainSpec(epochs=10, schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    assert [round(spec.lr_factor(e), 6) for e in (0, 4, 5, 7, 8, 9)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    assert spec.lr_drops() == [5, 8]
    cos = TrainSpec(epochs=4, schedule="cosine")
    assert cos.lr_factor(0) == 1 and cos.lr_factor(2) == pytest.approx(0.5) and cos.lr_drops() == []


def test_grad_evals_count_input_gradients():
    result = run_trial(tiny())
    # half of 400 examples attacked with 2 steps, for 3 epochs; the dropped single-example batch aside
    assert result.metrics["train/grad_evals"] == pytest.approx(3 * 200 * 2, rel=0.02)
    assert result.history[-1]["train/attacked_fraction"] == pytest.approx(0.5, abs=0.01)


# FGSM from a zero start at eps 0.25 on MNIST: robust accuracy rises for five epochs, then collapses to
# near zero in one (select-slice PGD, seed 0: 0.24 0.37 0.45 0.46 0.57 | 0.16 0.13 0.00 ...), while
# clean accuracy stays above 0.9: catastrophic overfitting, provoked for real.
COLLAPSING = {
    "seed": 0,
    "data": {"dataset": "mnist5k", "select_fraction": 0.2},
    "threat": {"norm": "linf", "eps": 0.25, "steps": 1, "step_size": 0.25, "random_start": False},
    "method": {"kind": "at"},
    "train": {"epochs": 10, "batch_size": 64, "lr": 0.05, "schedule": "constant", "stop_on_collapse": True},
    "eval": {"pgd_steps": 10, "n": 200, "autoattack": {"n": 0}},
    "runtime": {"threads": 1},
}


def test_a_real_catastrophic_overfitting_is_flagged_and_stopped_at_the_check_that_confirms_it():
    result = run_trial(parse_trial(COLLAPSING))
    pgd = [h["select/pgd_acc"] for h in result.history]
    onset = result.collapsed_at
    assert onset is not None and result.metrics["train/collapsed"] == 1, pgd
    peak = max(pgd[:onset])
    assert peak >= 0.3 and max(pgd[onset:]) <= peak / 2, pgd  # it rose, then fell below half, twice in a row
    assert min(h["select/clean_acc"] for h in result.history[onset:]) >= 0.8  # clean accuracy held: not divergence
    assert len(result.history) == onset + 2 < COLLAPSING["train"]["epochs"]  # stopped once confirmed
    assert [h["select/collapsed"] for h in result.history[onset:]] == [0.0, 1.0]
    assert result.metrics["train/selected_epoch"] == pgd.index(peak)  # the checkpoint before the collapse
