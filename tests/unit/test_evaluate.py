import pytest
import torch

from satune.data import TensorSource
from satune.evaluate import (
    autoattack_correct,
    clean_correct,
    eval_attack,
    final_metrics,
    integrity_problems,
    pgd_correct,
)
from satune.models import create_model
from satune.specs import EvalSpec, ModelSpec, ThreatSpec


@pytest.fixture(scope="module")
def trained():
    """A small model trained for a few steps on separable blobs, so accuracies are non-trivial."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(40)
    x = (torch.rand(120, 1, 8, 8, generator=g) * 0.3 + y.view(-1, 1, 1, 1) * 0.3).clamp(0, 1)
    model = create_model(ModelSpec(), (1, 8, 8), [3], [0.4], [0.3])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def test_robust_accuracy_never_exceeds_clean(trained):
    model, x, y = trained
    threat = ThreatSpec(norm="linf", eps=0.1)
    spec = EvalSpec(pgd_steps=5, autoattack={"version": "custom", "attacks": ["apgd-ce"], "n": 40})
    clean = clean_correct(model, x, y, 64)
    pgd = pgd_correct(model, x, y, eval_attack(threat, spec), 64, restarts=2, seed=0)
    aa = autoattack_correct(model, x[:40], y[:40], threat, spec.autoattack, batch_size=64, n_classes=3)
    assert clean.float().mean() > 0.8
    assert not (pgd & ~clean).any() and not (aa & ~clean[:40]).any()
    assert pgd.float().mean() < clean.float().mean()


def test_autoattack_standard_runs_with_fewer_than_ten_classes(trained):
    model, x, y = trained
    spec = EvalSpec(autoattack={"version": "standard", "n": 6})
    ok = autoattack_correct(
        model, x[:6], y[:6], ThreatSpec(norm="l2", eps=0.05), spec.autoattack, batch_size=64, n_classes=3
    )
    assert ok.shape == (6,)


def test_final_metrics_per_class_and_per_subset(trained):
    model, x, y = trained
    source = TensorSource((x * 255).round().to(torch.uint8), y)
    spec = EvalSpec(pgd_steps=3, autoattack={"version": "custom", "attacks": ["apgd-ce"], "n": 30})
    m, outcomes = final_metrics(
        model, source, ThreatSpec(norm="linf", eps=0.05), spec, ("a", "b", "c"), 0, a_classes=[1]
    )
    for kind in ("clean", "pgd", "aa"):
        assert {f"eval/{kind}_acc", f"eval/{kind}_acc_A", f"eval/{kind}_acc_B", f"eval/class_{kind}_acc/b"} <= set(m)
        assert {f"eval/{kind}_n", f"eval/{kind}_acc_lo", f"eval/{kind}_acc_hi", f"eval/class_{kind}_n/b"} <= set(m)
    assert (m["eval/clean_n"], m["eval/aa_n"]) == (120, 30)
    assert m["eval/pgd_acc_lo"] <= m["eval/pgd_acc"] <= m["eval/pgd_acc_hi"]
    assert m["eval/aa_acc"] == outcomes.correct["aa"].float().mean().item()
    lines = outcomes.csv().splitlines()  # every example, AutoAttack's prefix only where it ran
    assert lines[0] == "index,label,clean,pgd,aa" and len(lines) == 121 and lines[-1].endswith(",")
    assert m["eval/clean_acc_A"] == pytest.approx(m["eval/class_clean_acc/b"])
    n_a = int((y == 1).sum())
    assert m["eval/clean_acc"] == pytest.approx(
        (m["eval/clean_acc_A"] * n_a + m["eval/clean_acc_B"] * (120 - n_a)) / 120
    )


def test_eval_pgd_defaults_to_a_strong_step(trained):
    attack = eval_attack(ThreatSpec(norm="l2", eps=1.5), EvalSpec(pgd_steps=20))
    assert attack.alpha == pytest.approx(2.5 * 1.5 / 20) and attack.random_start and attack.bn_mode == "eval"


def test_integrity_checks_pass_on_a_sound_model(trained):
    model, x, y = trained
    assert integrity_problems(model, x[:32], y[:32]) == []


def test_integrity_flags_a_model_left_in_train_mode_with_dropout(trained):
    model, x, y = trained

    class StuckInTraining(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.drop = model, torch.nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.net(x))

        def train(self, mode=True):  # a model whose eval() is lost: dropout stays on
            return super().train(True)

    problems = integrity_problems(StuckInTraining(), x[:32], y[:32])
    assert "the model is in training mode during evaluation" in problems
    assert "two forward passes differ (dropout or other randomness at evaluation)" in problems


def test_integrity_flags_probabilities_and_inputs_out_of_range(trained):
    model, x, y = trained
    softmax = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
    assert any("returns probabilities" in p for p in integrity_problems(softmax, x[:32], y[:32]))
    assert any("inputs outside [0, 1]" in p for p in integrity_problems(model, x[:32] * 255, y[:32]))
