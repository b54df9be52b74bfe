import pytest
import torch
import torch.nn.functional as F

from satune.attacks import Attack
from satune.data.aux import load_aux
from satune.methods.biamat import Biamat, at_loss, aux_losses, gate, omega_from, trades_loss, uniform_ce
from satune.methods.trades import Trades, kl
from satune.models import create_model
from satune.runtime import cache_dir
from satune.specs import BiamatSpec, ModelSpec, RuntimeSpec, parse_trial
from satune.train import CHECKPOINT_FILE
from satune.trial import run_trial


def test_gate_splits_a_known_batch():
    conf = torch.tensor([0.1, 0.5, 0.55, 0.9])
    assert float(omega_from(torch.tensor([0.8, 1.0]), 0.55)) == pytest.approx(0.495)
    assert gate(conf, 0.5, "biamat").tolist() == [False, True, True, True]
    assert gate(conf, 0.95, "biamat").tolist() == [False] * 4  # all low
    assert gate(conf, 0.05, "biamat").tolist() == [True] * 4  # all high
    assert gate(conf, 0.5, "naive").all() and not gate(conf, 0.5, "all_uniform").any()


def test_uniform_target_is_the_mean_negative_log_probability():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    target = torch.full((1, 3), 1 / 3)
    assert uniform_ce(z) == pytest.approx(F.cross_entropy(z, target).item())


def heads(n_p=3, n_a=4, c=5, c_aux=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(n_p + n_a, c, generator=g, requires_grad=True)
    la = torch.randn(n_p + n_a, c_aux, generator=g, requires_grad=True)
    y = torch.randint(0, c, (n_p,), generator=g)
    ya = torch.randint(0, c_aux, (n_a,), generator=g)
    return lp, la, y, ya


def test_naive_gate_equals_the_naive_formula():
    lp, la, y, ya = heads()
    hi = gate(torch.rand(4), 0.5, "naive")
    naive = F.cross_entropy(lp[:3], y) + 0.7 * F.cross_entropy(la[3:], ya)
    assert at_loss([lp, la], y, ya, hi, 0.7).item() == pytest.approx(naive.item())


def test_aux_loss_is_averaged_over_all_aux_images_whatever_the_split():
    lp, la, y, ya = heads()
    hi = torch.tensor([True, False, False, True])
    expected = torch.stack(
        [
            F.cross_entropy(la[3:4], ya[0:1]),
            uniform_ce(lp[4:5])[0],
            uniform_ce(lp[5:6])[0],
            F.cross_entropy(la[6:7], ya[3:4]),
        ]
    ).mean()
    assert aux_losses(lp[3:], la[3:], ya, hi).mean().item() == pytest.approx(expected.item())
    for split in (torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)):  # all-low, all-high
        assert torch.isfinite(at_loss([lp, la], y, ya, split, 1.0))
        loss = trades_loss([lp, la], [lp * 0.9, la * 0.9], y, ya, split, 0.5, 6.0, "trades")
        assert torch.isfinite(loss)


def test_all_low_sends_no_gradient_to_the_aux_head():
    lp, la, y, ya = heads()
    at_loss([lp, la], y, ya, torch.zeros(4, dtype=torch.bool), 1.0).backward()
    assert la.grad is None or not la.grad.any()


def test_trades_loss_with_beta_zero_and_identical_adversaries_is_plain_ce():
    lp, la, y, ya = heads()
    hi = torch.tensor([True, True, False, False])
    loss = trades_loss([lp, la], [lp, la], y, ya, hi, 0.0, 6.0, "trades")
    assert loss.item() == pytest.approx(F.cross_entropy(lp[:3], y).item(), abs=1e-6)
    assert kl(lp, lp).abs().max() < 1e-6


@pytest.fixture(scope="module")
def aux():
    return load_aux(
        BiamatSpec(aux=["digits", "noise"]).aux, (1, 8, 8), "none", cache_dir(RuntimeSpec()), torch.device("cpu")
    )


def test_aux_sources_sit_side_by_side_in_one_head(aux):
    assert aux.labels == ("digits", "noise") and aux.n_classes == 20
    x, y, idx = next(aux.stream(64, torch.Generator().manual_seed(0)))
    assert x.shape == (64, 1, 8, 8)
    src = aux.source_of[idx]
    assert (y[src == 1] >= 10).all() and (y[src == 0] < 10).all()


def test_aux_images_take_the_primary_shape():
    a = load_aux(BiamatSpec(aux=["digits"]).aux, (3, 28, 28), "none", cache_dir(RuntimeSpec()), torch.device("cpu"))
    assert a.source.x.shape[1:] == (3, 28, 28) and a.source.x.dtype == torch.uint8


@pytest.mark.parametrize("variant", ["at", "trades"])
def test_alpha_zero_leaves_the_aux_head_without_gradient(aux, variant):
    torch.manual_seed(0)
    model = create_model(ModelSpec(), (1, 8, 8), [10, 20], [0.3], [0.3])
    spec = BiamatSpec(aux=["digits", "noise"], alpha=0.0, warmup_epochs=0, variant=variant)
    method = Biamat(spec, Attack("linf", 0.1, 0.05, 2), aux, aux_batch_size=16, hi_loss="trades", seed=0)
    method.start_epoch(0)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    out = method.step(model, x, y, torch.arange(16), torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert model.heads[1].weight.grad is None or not model.heads[1].weight.grad.any()
    assert model.heads[0].weight.grad.abs().sum() > 0
    assert out["stats"]["grad_evals"] == 32 * 2  # primary + auxiliary images, two steps each


def test_warmup_trains_the_primary_only_and_then_freezes_omega(aux):
    torch.manual_seed(0)
    model = create_model(ModelSpec(), (1, 8, 8), [10, 20], [0.3], [0.3])
    method = Biamat(
        BiamatSpec(aux=["digits", "noise"], warmup_epochs=1),
        Attack("linf", 0.1, 0.05, 1),
        aux,
        aux_batch_size=8,
        hi_loss="trades",
        seed=0,
    )
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    method.start_epoch(0)
    method.step(model, x, y, torch.arange(8), None)["loss"].backward()
    assert method.omega is None and model.heads[1].weight.grad is None
    method.start_epoch(1)
    method.step(model, x, y, torch.arange(8), None)
    omega = method.omega
    assert omega is not None
    method.step(model, torch.rand(8, 1, 8, 8), y, torch.arange(8), None)
    assert method.omega == omega  # fixed after warm-up
    assert method.state_dict() == {"omega": omega}


def test_trades_baseline_step():
    torch.manual_seed(0)
    model = create_model(ModelSpec(), (1, 8, 8), [10], [0.3], [0.3])
    out = Trades(Attack("linf", 0.1, 0.05, 3), beta=6.0).step(
        model, torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)), None, None
    )
    assert torch.isfinite(out["loss"]) and out["stats"]["grad_evals"] == 24


def biamat_trial():
    return parse_trial(
        {
            "seed": 3,
            "data": {"dataset": "digits", "classes": [0, 1, 2, 3, 4], "train_size": 300},
            "threat": {"norm": "linf", "eps": 0.1, "steps": 2},
            "method": {"kind": "biamat", "aux": ["digits[5-9]", {"dataset": "noise", "size": 300}], "warmup_epochs": 1},
            "train": {"epochs": 3, "batch_size": 64},
            "eval": {"pgd_steps": 3, "autoattack": {"n": 0}},
            "runtime": {"threads": 1},
        }
    )


def test_omega_survives_a_resume(tmp_path):
    full = run_trial(biamat_trial(), workdir=tmp_path / "full")

    class Stop(Exception):
        pass

    def stop(metrics, checkpoint):
        if metrics["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        run_trial(biamat_trial(), on_epoch=stop, workdir=tmp_path / "cut")
    state = torch.load(tmp_path / "cut" / "checkpoint" / CHECKPOINT_FILE, weights_only=True)
    assert state["method"]["omega"] == full.history[1]["biamat/omega"]
    resumed = run_trial(biamat_trial(), checkpoint=tmp_path / "cut" / "checkpoint", workdir=tmp_path / "again")
    drop = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]  # noqa: E731
    assert drop(resumed.history) == drop(full.history)
    assert {"biamat/hi_ratio/digits_5_6_7_8_9", "biamat/hi_ratio/noise"} <= set(full.history[-1])


def test_defaults_follow_the_official_code():
    assert BiamatSpec(aux=["noise"]).resolved_warmup_epochs == 5
    assert BiamatSpec(aux=["noise"], gate="all_uniform").resolved_warmup_epochs == 0  # the baseline has none
    assert BiamatSpec(aux=["noise"], gate="all_uniform", warmup_epochs=2).resolved_warmup_epochs == 2
    trades = BiamatSpec(aux=["noise"], variant="trades")
    assert trades.resolved_aux_hi_loss("cifar100") == "ce" and trades.resolved_aux_hi_loss("cifar10") == "trades"
    assert (
        BiamatSpec(aux=["noise"], variant="trades", aux_hi_loss="trades").resolved_aux_hi_loss("cifar100") == "trades"
    )
