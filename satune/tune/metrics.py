"""What a running trial shows of itself: its name on the Ray dashboard's Actors page, and its
progress as Ray metrics, which each node's metrics agent exports to Prometheus (as `ray_<name>`)
and docker/grafana's dashboard plots per trial.

The names live here alone: the trainable sets the gauges, the Grafana dashboard queries them, and
a unit test checks that the two agree. Ray is imported only where the gauges are made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from satune.sweep.shown import shown
from satune.sweep.summary import REPEAT_KEY

PROMETHEUS_PREFIX = "ray_"  # Ray exports an application metric `x` to Prometheus as `ray_x`

# Every series of a trial carries these tags: the sweep, Tune's trial id, and the configuration's
# id (satune.config in MLflow: the same values, whichever repeat).
TAG_KEYS = ("sweep", "trial", "config")

EPOCH = "satune_trial_epoch"
EPOCHS = "satune_trial_epochs"
PROXY = "satune_trial_proxy"
TRAIN_LOSS = "satune_trial_train_loss"

# name -> (description, tag keys)
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    EPOCH: ("The last epoch the trial finished (0-based, as MLflow's `epoch`)", TAG_KEYS),
    EPOCHS: ("The epochs the trial trains for", TAG_KEYS),
    PROXY: ("The per-epoch metric the scheduler compares trials by (tag `metric` names it)", (*TAG_KEYS, "metric")),
    TRAIN_LOSS: ("The trial's training loss in its last epoch (train/loss)", TAG_KEYS),
}


def exported(name: str) -> str:
    """The name Prometheus sees."""
    return PROMETHEUS_PREFIX + name


def trial_tags(sweep: str, trial_id: str, config: Mapping[str, Any]) -> dict[str, str]:
    from satune.sweep.summary import config_id

    return {"sweep": sweep, "trial": trial_id, "config": config_id(dict(config))}


def epoch_values(metrics: Mapping[str, Any], proxy: str) -> dict[str, float]:
    """One epoch's report -> gauge name -> value (a metric the epoch did not compute is left out:
    the proxy comes only with the epochs that evaluate the select slice)."""
    values = {EPOCH: metrics.get("epoch"), TRAIN_LOSS: metrics.get("train/loss"), PROXY: metrics.get(proxy)}
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def describe(sweep: str, trial_id: str, config: Mapping[str, Any], limit: int = 200) -> str:
    """A trial as the Ray dashboard lists its actor (its repr):
    `sat-wA trial 5f3a_00002: method.w_A=2.03 repeat=1`, the values sorted, the repeat last."""
    values = sorted((k, v) for k, v in config.items() if k != REPEAT_KEY)
    if REPEAT_KEY in config:
        values.append((REPEAT_KEY, config[REPEAT_KEY]))
    text = " ".join(
        [
            f"{sweep} trial {trial_id}" + (":" if values else ""),
            *(f"{k}={shown(v, width=40, missing='None')}" for k, v in values),
        ]
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


class TrialGauges:
    """The trial's gauges, tagged once; `epoch()` sets them from an epoch's report."""

    def __init__(self, sweep: str, trial_id: str, config: Mapping[str, Any], proxy: str, epochs: int):
        from ray.util.metrics import Gauge

        self.proxy = proxy
        self.tags = trial_tags(sweep, trial_id, config)
        self.gauges = {name: Gauge(name, description=desc, tag_keys=keys) for name, (desc, keys) in GAUGES.items()}
        self.gauges[PROXY].set_default_tags({"metric": proxy})
        self.gauges[EPOCHS].set(epochs, tags=self.tags)

    def epoch(self, metrics: Mapping[str, Any]) -> None:
        for name, value in epoch_values(metrics, self.proxy).items():
            self.gauges[name].set(value, tags=self.tags)
