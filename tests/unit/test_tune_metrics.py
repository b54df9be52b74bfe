"""How a trial shows itself to the Ray dashboard and Prometheus, without starting Ray: its actor's
class and repr, the tags and values of its gauges (tests/integration/test_dashboard.py sees them live)."""

import pytest
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.experiment import Experiment

from satune.specs import parse_sweep
from satune.sweep.summary import REPEAT_KEY, config_id
from satune.tune import metrics
from satune.tune.trainable import TrialContext, trial_trainable


def test_a_trial_is_described_by_its_sweep_id_and_sampled_values_the_repeat_last():
    config = {REPEAT_KEY: 1, "train.lr": 0.012345678, "method.w_A": 2.0, "method.kind": "sat"}
    assert metrics.describe("sat-wA", "5f3a_00002", config) == (
        "sat-wA trial 5f3a_00002: method.kind=sat method.w_A=2 train.lr=0.01235 repeat=1"
    )
    assert metrics.describe("grid", "ab12", {}) == "grid trial ab12"
    long = metrics.describe("s", "t", {f"k{i}": "v" * 60 for i in range(20)})
    assert len(long) == 200 and long.endswith("…") and "v" * 41 not in long


def test_an_epoch_sets_the_epoch_the_loss_and_the_proxy_when_the_epoch_has_it():
    report = {"epoch": 3, "train/loss": 0.25, "select/pgd_acc": 0.5, "train/lr": 0.1}
    assert metrics.epoch_values(report, "select/pgd_acc") == {
        metrics.EPOCH: 3.0,
        metrics.TRAIN_LOSS: 0.25,
        metrics.PROXY: 0.5,
    }
    assert metrics.epoch_values({"epoch": 0, "train/loss": 1.0}, "select/pgd_acc") == {
        metrics.EPOCH: 0.0,
        metrics.TRAIN_LOSS: 1.0,
    }


def test_series_are_tagged_with_the_sweep_the_trial_and_its_configuration():
    config = {"method.w_A": 2.0, REPEAT_KEY: 3}
    tags = metrics.trial_tags("sat-wA", "5f3a_00002", config)
    assert tags == {"sweep": "sat-wA", "trial": "5f3a_00002", "config": config_id(config)}
    assert tags["config"] == metrics.trial_tags("sat-wA", "x", {"method.w_A": 2.0, REPEAT_KEY: 0})["config"]
    for name, (_, keys) in metrics.GAUGES.items():
        assert name.startswith("satune_") and set(metrics.TAG_KEYS) <= set(keys)
        assert metrics.exported(name) == f"ray_{name}"


def test_the_trainable_is_a_named_class_with_its_resources_and_tunes_old_name(tmp_path):
    sweep = parse_sweep(
        {
            "name": "s",
            "storage": str(tmp_path),
            "trial": {"data": {"dataset": "digits"}, "threat": {"norm": "linf", "eps": 0.1}, "method": {"kind": "at"}},
            "search": {"space": {"train.lr": {"uniform": [0.01, 0.1]}}},
        }
    )
    ctx = TrialContext(base={}, sweep_seed=0, tracking_uri="http://x", experiment_id="1", parent_run_id="p", threads=1)
    cls = trial_trainable(ctx, sweep, {"cpu": 2, "gpu": 0.5})
    assert cls.__name__ == cls.__qualname__ == "SatuneTrial"  # Ray lists the qualified name
    assert "__repr__" in vars(cls)
    assert Experiment.get_trainable_name(cls) == "run"  # what sweeps already saved say, for --resume
    request = cls.default_resource_request({})
    assert isinstance(request, PlacementGroupFactory) and request.required_resources == {"CPU": 2, "GPU": 0.5}
    assert repr(cls.__new__(cls)) == "SatuneTrial"  # before __init__, as old Ray versions asked


@pytest.mark.parametrize("report", [{"epoch": 0, "train/loss": 1.0}, {"epoch": 2, "train/loss": 0.5, "p": 0.7}])
def test_the_gauges_take_the_trials_tags(report):
    """Ray checks, as each gauge is set, that every tag key it declares has a str value (also with
    no Ray running): a trial's gauges are set without complaint."""
    gauges = metrics.TrialGauges("s", "t", {"train.lr": 0.05}, proxy="p", epochs=3)
    gauges.epoch(report)
    assert gauges.gauges[metrics.PROXY].info["default_tags"] == {"metric": "p"}
