import pytest
import torch

from satune.specs import parse_trial
from satune.trial import TrialResult, run_trial


def digits_trial(method):
    return parse_trial(
        {
            "seed": 0,
            "data": {"dataset": "digits"},
            "threat": {"norm": "linf", "eps": 0.1, "steps": 5},
            "method": method,
            "train": {"epochs": 6, "batch_size": 64, "lr": 0.05},
            "eval": {"pgd_steps": 10, "autoattack": {"n": 60, "version": "custom", "attacks": ["apgd-ce"]}},
            "runtime": {"threads": 1},
        }
    )


def test_sat_on_digits_is_more_robust_than_clean_training():
    clean = run_trial(digits_trial({"kind": "clean"})).metrics
    sat = run_trial(digits_trial({"kind": "sat", "fraction": 0.5, "ranking": "entropy_hardest"})).metrics
    assert sat["eval/pgd_acc"] > clean["eval/pgd_acc"] + 0.2, (sat["eval/pgd_acc"], clean["eval/pgd_acc"])
    assert sat["eval/aa_acc"] > clean["eval/aa_acc"] + 0.2, (sat["eval/aa_acc"], clean["eval/aa_acc"])
    assert sat["eval/clean_acc"] > 0.9
    assert sat["train/grad_evals"] > 0 == clean["train/grad_evals"]


def test_result_carries_the_design_metric_names():
    result = run_trial(digits_trial({"kind": "sat", "split": "class", "classes": [3, 8]}))
    m = result.metrics
    for key in (
        "eval/clean_acc",
        "eval/pgd_acc",
        "eval/aa_acc",
        "eval/pgd_acc_A",
        "eval/aa_acc_B",
        "eval/class_aa_acc/3",
        "eval/aa_n_B",
        "eval/pgd_acc_lo_A",
        "proxy/pgd_acc",
        "last/pgd_acc",
        "last/pgd_gap",
        "train/grad_evals",
        "train/selected_epoch",
        "time/total_s",
    ):
        assert key in m, key
    epoch = result.history[-1]
    assert {"train/attacked_fraction", "select/pgd_acc", "time/epoch_s"} <= set(epoch)
    assert 0.15 < epoch["train/attacked_fraction"] < 0.25  # two of ten classes
    assert m["eval/aa_acc"] <= m["eval/clean_acc"]
    selected = result.history[int(m["train/selected_epoch"])]
    assert m["proxy/pgd_acc"] == pytest.approx(selected["select/pgd_acc"])  # the selected epoch's, not the last's
    assert m["last/pgd_gap"] == pytest.approx(m["eval/pgd_acc"] - m["last/pgd_acc"])
    out = result.to_json()
    assert set(out) == {"spec", "effective", "metrics", "history", "integrity"} and len(out["history"]) == 6
    assert out["spec"]["method"]["classes"] == ["3", "8"]


def test_the_result_files_spec_validates_again_to_the_same_spec():
    """What satune eval and transfer read back: rules that look at which fields were set must hold."""
    spec = parse_trial(
        {
            "data": {"dataset": "digits"},
            "threat": {"norm": "linf", "eps": 0.1, "attack": "fgsm_rs"},
            "method": {"kind": "sat", "split": "class", "classes": ["3"]},
        }
    )
    written = TrialResult(spec, {}, [], torch.nn.Identity()).to_json()["spec"]
    assert parse_trial(written) == spec


def test_channels_last_is_what_the_trial_logs_and_trains_with():
    spec = digits_trial({"kind": "clean"})
    cnn = parse_trial(
        {
            **spec.model_dump(mode="json", exclude_unset=True),
            "train": {"epochs": 1, "batch_size": 64},
            "runtime": {"threads": 1, "channels_last": True},
        }
    )  # small_cnn, the default model
    result = run_trial(cnn)
    convs = [p for p in result.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert result.effective["runtime.channels_last"] is True and result.effective["runtime.amp"] is False
    default = run_trial(parse_trial({**cnn.model_dump(mode="json", exclude_unset=True), "runtime": {"threads": 1}}))
    assert default.effective["runtime.channels_last"] is False  # CPU: off unless asked
    convs = [p for p in default.model.parameters() if p.dim() == 4]
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
