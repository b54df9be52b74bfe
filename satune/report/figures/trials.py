"""Which trials and which numbers the figures show: the robust metrics a sweep reports, the one
figures lead with, the trials ranked by the search's objective, and the best the summary named."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from satune.report.fetch import SweepData, Trial
from satune.sweep.summary import best_configuration
from satune.sweep.summary import ranked as summary_ranked
from satune.tracking.tags import BEST_TRIAL_TAG

# The robust numbers a sweep may report on the final slice, most trustworthy last: PGD and AutoAttack of
# the trials, AutoAttack of the final stage on the winners.
ROBUST = {
    "eval/pgd_acc": ("PGD (trial)", "o"),
    "eval/aa_acc": ("AutoAttack (trial)", "s"),
    "final/aa_acc": ("AutoAttack (final stage)", "D"),
}
CLEAN = "eval/clean_acc"


def robust_metrics(trials: Iterable[Trial]) -> list[str]:
    rows = list(trials)
    return [m for m in ROBUST if any(m in t.row.metrics for t in rows)]


def headline(data: SweepData) -> str:
    """The robust number figures lead with: the strongest attack every finished trial has."""
    for m in reversed(ROBUST):
        if all(m in t.row.metrics for t in data.finished):
            return m
    return data.spec.search.metrics[0]


def ranked(data: SweepData) -> list[Trial]:
    """The finished trials that report the search's objective, best first."""
    metric = data.spec.search.metrics[0]
    have = [t for t in data.finished if metric in t.row.metrics]
    return summary_ranked(have, lambda t: t.row.metrics[metric], data.spec.search.modes[0])


def best_trial(data: SweepData) -> str | None:
    """The trial the sweep's summary named best: chosen on the select slice (with repeats, the best
    configuration's first repeat)."""
    if BEST_TRIAL_TAG in data.tags:
        return data.tags[BEST_TRIAL_TAG]
    best, _ = best_configuration(data.spec, data.rows)
    return best.trial_id if best is not None else None


def searched_keys(data: SweepData) -> list[str]:
    return [*data.spec.search.grid, *data.spec.search.space]


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
