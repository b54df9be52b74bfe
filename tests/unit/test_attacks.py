import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from satune.attacks import Attack, attack_mode, ce_loss, pgd, threat_step
from satune.models import create_model
from satune.specs import ModelSpec, ThreatSpec


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model(ModelSpec(arch="small_cnn"), (1, 8, 8), [10], [0.3], [0.3])


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=g)
    x[:4] = 0.0  # images at the box's edges
    x[4:8] = 1.0
    return x, torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_the_norm_ball_and_the_box(model, batch, norm, random_start):
    x, y = batch
    eps = 0.5 if norm == "l2" else 0.1
    attack = Attack(norm, eps, eps / 2, steps=5, random_start=random_start)
    x_adv = attack(model, x, y, gen=torch.Generator().manual_seed(0))
    delta = (x_adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (size > 0).any(), "the attack moved nothing"


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_raises_the_loss(model, batch, norm):
    x, y = batch
    model.eval()
    eps = 1.0 if norm == "l2" else 0.2
    x_adv = Attack(norm, eps, eps / 4, steps=10)(model, x, y)
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_best_iterate_returns_the_highest_loss_iterate(model, batch):
    x, y = batch
    model.eval()
    seen = []

    def loss_fn(x_adv):
        loss = F.cross_entropy(model(x_adv), y, reduction="none")
        seen.append(loss.detach())
        return loss

    x_best = pgd(x, loss_fn, threat_step("linf", 0.3, 0.3), steps=4, best_iterate=True)
    best_seen = torch.stack(seen).amax(0)
    with torch.no_grad():
        final = F.cross_entropy(model(x_best), y, reduction="none")
    assert torch.allclose(final, best_seen, atol=1e-5)
    assert len(seen) == 5  # four scored iterates plus the final one (SAT's code never scores the last)


def test_random_start_comes_from_the_callers_generator(model, batch):
    x, y = batch
    attack = Attack("l2", 0.5, 0.1, steps=2, random_start=True)
    a = attack(model, x, y, gen=torch.Generator().manual_seed(3))
    b = attack(model, x, y, gen=torch.Generator().manual_seed(3))
    c = attack(model, x, y, gen=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_mode_attack_uses_batch_stats_but_leaves_running_stats(model, batch):
    x, y = batch
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = []
    hook = model.backbone[0][1].register_forward_hook(lambda m, i, o: modes.append(m.training))
    Attack("linf", 0.1, 0.05, steps=2, bn_mode="train")(model, x, y)
    Attack("linf", 0.1, 0.05, steps=2, bn_mode="eval")(model, x, y)
    hook.remove()
    assert modes == [True, True, False, False]
    after = model.state_dict()
    for k, v in before.items():
        if "num_batches_tracked" not in k:
            assert torch.equal(v, after[k]), k
    assert model.training  # the caller's mode is restored


def test_attack_mode_restores_momentum_after_an_error(model):
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(RuntimeError), attack_mode(model, "train"):
        assert bn.momentum == 0.0
        raise RuntimeError
    assert bn.momentum == 0.1


def test_fgsm_rs_is_one_random_start_step():
    threat = ThreatSpec(norm="linf", eps=0.1, attack="fgsm_rs")
    attack = Attack.from_threat(threat)
    assert (attack.steps, attack.random_start, attack.alpha) == (1, True, pytest.approx(0.125))
    assert Attack.from_threat(ThreatSpec(norm="l2", eps=1.0)).alpha == 0.25  # PGD default: eps/4


def test_default_loss_is_cross_entropy(model, batch):
    x, y = batch
    model.eval()
    with torch.no_grad():
        assert torch.allclose(ce_loss(model, y)(x), F.cross_entropy(model(x), y, reduction="none"))
