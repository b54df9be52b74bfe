"""A sweep's outcome: the one ranking rule every view of a sweep uses (the end table, the best, the final
stage's winners, the verdicts' order, the report's figures, the live view), and the end table at scale."""

import csv
from pathlib import Path

from satune.specs import parse_sweep
from satune.sweep.ending import END_ROWS, ending
from satune.sweep.summary import (
    TRIALS_CSV,
    SweepResult,
    TrialRow,
    best_configuration,
    ranked,
    tune_metrics,
    write_csv,
)


def test_best_first_by_mode_missing_last_ties_by_the_tie_key_else_in_order():
    items = [("b", 0.5), ("a", 0.5), ("c", None), ("d", 0.9), ("e", 0.1)]
    value = dict(items).get
    names = [k for k, _ in items]
    assert ranked(names, value, "max") == ["d", "b", "a", "e", "c"]  # a tie keeps the given order
    assert ranked(names, value, "max", tie=str) == ["d", "a", "b", "e", "c"]
    assert ranked(names, value, "min", tie=str) == ["e", "a", "b", "d", "c"]  # missing is last either way
    assert ranked([], value, "max") == []


TRIAL = {"data": {"dataset": "digits"}, "method": {"kind": "clean"}, "threat": {"norm": "linf", "eps": 0.1}}


def test_the_end_table_shows_the_top_rows_and_every_trial_goes_to_csv(tmp_path):
    """A thousand trials print as the best twenty and where the rest are; the CSV holds them all."""
    search = {"num_samples": 1000, "space": {"train.lr": {"loguniform": [0.01, 0.1]}}}
    spec = parse_sweep({"name": "many", "trial": TRIAL, "search": search})
    rows = [
        TrialRow(f"t{i:04d}", "TERMINATED", {"train.lr": 0.01 + i / 1e5}, {"proxy/pgd_acc": i / 1000}, seed=i)
        for i in range(1000)
    ]
    best, front = best_configuration(spec, rows)
    (table, *_) = ending(spec, SweepResult(tmp_path, rows, best, front), Path("many.yaml")).tables
    assert len(table.rows) == END_ROWS and table.rows[0][0] == "t0999"  # best first
    assert table.title.endswith(f"the top {END_ROWS}, {1000 - END_ROWS} more trials in {tmp_path / TRIALS_CSV}")
    write_csv(tmp_path / TRIALS_CSV, [{"trial_id": r.trial_id, **r.config, **r.metrics} for r in rows])
    with (tmp_path / TRIALS_CSV).open() as f:
        read = list(csv.DictReader(f))
    assert len(read) == 1000 and float(read[999]["proxy/pgd_acc"]) == 0.999


def test_a_short_end_table_is_shown_whole(tmp_path):
    spec = parse_sweep({"name": "few", "trial": TRIAL})
    rows = [TrialRow(f"t{i}", "TERMINATED", {}, {"proxy/pgd_acc": i / 10}) for i in range(3)]
    (table, *_) = ending(spec, SweepResult(tmp_path, rows, rows[2]), Path("few.yaml")).tables
    assert len(table.rows) == 3 and "more trials" not in table.title


def test_tune_is_told_what_it_reads_of_a_final_report_and_no_more():
    """Tune keeps running statistics of every metric it is told, per trial: the per-class numbers go
    to MLflow alone; the searched, shown, scheduler's and flag metrics, with their intervals, to Tune."""
    search = {"num_samples": 2, "metric": ["proxy/pgd_acc", "proxy/clean_acc"], "mode": ["max", "max"]}
    spec = parse_sweep({"name": "told", "trial": TRIAL, "search": search})
    told = set(tune_metrics(spec))
    assert {"proxy/pgd_acc", "proxy/pgd_n", "proxy/pgd_acc_lo", "proxy/pgd_acc_hi", "proxy/clean_acc"} <= told
    assert {"eval/pgd_acc", "eval/pgd_acc_lo", "eval/clean_acc", spec.scheduler.metric} <= told
    assert {"train/collapsed", "last/overfit"} <= told  # the end table's flags
    assert not any("/class_" in m for m in told) and len(told) < 40
