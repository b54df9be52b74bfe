import pytest
import torch
import torch.nn.functional as F

from satune.attacks import Attack
from satune.methods import KINDS, SubsetAdversarial, subset_weights
from satune.models import create_model
from satune.specs import ModelSpec, SatSpec, parse_trial
from satune.trial import build_context


class CountingAttack(Attack):
    """The real attack, recording the size of every batch it is asked to attack."""

    def __call__(self, model, x, y=None, loss_fn=None, gen=None):
        self.calls.append(len(x))
        return super().__call__(model, x, y, loss_fn, gen)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = create_model(ModelSpec(arch="small_cnn"), (1, 8, 8), [10], [0.3], [0.3])
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    idx = torch.arange(100, 132)
    in_a = torch.zeros(200, dtype=torch.bool)
    in_a[torch.tensor([100, 103, 110, 111, 131])] = True
    return model, x, y, idx, in_a


def test_sat_attacks_exactly_the_A_members(setup):
    model, x, y, idx, in_a = setup
    attack = CountingAttack("linf", 0.3, 0.1, steps=3)
    object.__setattr__(attack, "calls", [])
    seen = {}
    hook = model.register_forward_pre_hook(
        lambda m, inp: seen.__setitem__("x", inp[0].detach().clone()) if m.training else None
    )
    out = SubsetAdversarial(attack, in_a).step(model, x, y, idx, torch.Generator().manual_seed(0))
    hook.remove()
    mask = in_a[idx]
    assert attack.calls == [int(mask.sum())]  # one attack, on the A sub-batch alone
    changed = (seen["x"] != x).flatten(1).any(1)
    assert torch.equal(changed, mask)  # A rows perturbed, B rows untouched
    assert out["stats"]["attacked"] == 5 and out["stats"]["grad_evals"] == 5 * 3


def test_batch_without_A_members_is_a_clean_step(setup):
    model, x, y, idx, _ = setup
    attack = CountingAttack("linf", 0.3, 0.1, steps=3)
    object.__setattr__(attack, "calls", [])
    out = SubsetAdversarial(attack, torch.zeros(200, dtype=torch.bool)).step(model, x, y, idx, None)
    assert attack.calls == [] and out["stats"]["grad_evals"] == 0
    assert torch.allclose(out["loss"], F.cross_entropy(out["logits"], y))


def test_weighted_loss_is_normalised_by_the_weight_sum(setup):
    model, x, y, idx, in_a = setup
    attack = Attack("linf", 0.3, 0.1, steps=2)
    out = SubsetAdversarial(attack, in_a, w_A=4.0, w_B=0.5).step(model, x, y, idx, None)
    ce = F.cross_entropy(out["logits"], y, reduction="none")
    w = torch.where(in_a[idx], 4.0, 0.5)
    assert torch.allclose(out["loss"], (w * ce).sum() / w.sum())
    assert not torch.allclose(out["loss"], ce.mean())  # the weights matter


@pytest.mark.parametrize(("f", "w_a"), [(0.1, 18.0), (0.3, 9.333333), (0.5, 6.0), (0.7, 3.428571), (0.9, 1.111111)])
def test_overemphasized_weights_match_the_papers_grid(f, w_a):
    spec = SatSpec(fraction=f, weighting="overemphasized")
    assert subset_weights(spec, f) == (pytest.approx(w_a, rel=1e-5), 1.0)


def test_weightings():
    assert subset_weights(SatSpec(fraction=0.2, weighting="balanced"), 0.2) == (pytest.approx(4.0), 1.0)
    assert subset_weights(SatSpec(fraction=0.2), 0.2) == (1.0, 1.0)
    assert subset_weights(SatSpec(fraction=0.2, w_A=3.0), 0.2) == (3.0, 1.0)
    assert subset_weights(SatSpec(fraction=1.0, weighting="balanced"), 1.0) == (1.0, 1.0)  # B empty


def test_baselines_are_the_two_limits_of_sat(setup):
    model, x, y, idx, _ = setup
    for kind, attacked in (("clean", 0), ("at", 32)):
        spec = parse_trial(
            {
                "data": {"dataset": "digits"},
                "threat": {"norm": "linf", "eps": 0.3, "steps": 2},
                "method": {"kind": kind},
            }
        )
        built = KINDS[kind].build(build_context(spec))
        assert built.method.step(model, x, y, idx, None)["stats"]["attacked"] == attacked


def test_summary_metrics(setup):
    model, x, y, idx, in_a = setup
    method = SubsetAdversarial(Attack("linf", 0.3, 0.1, steps=2), in_a)
    stats = method.step(model, x, y, idx, None)["stats"]
    m = method.summarize(stats)
    assert m["train/attacked_fraction"] == pytest.approx(5 / 32)
    assert 0 <= m["train/adv_acc"] <= 1 and m["train/loss"] > 0
