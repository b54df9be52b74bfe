"""The report's figures from trial rows alone (no server): which are drawn, and the numbers behind them.
tests/integration/test_sweep_report.py checks them against a real sweep in MLflow."""

from datetime import UTC, datetime

import pytest

from satune.report.fetch import SweepData, Trial, param_value
from satune.report.figures import (
    biamat_gate,
    class_transfer,
    fraction_curves,
    objective_vs_parameters,
    pareto,
    transfer_by_fraction,
)
from satune.specs import parse_sweep
from satune.sweep.summary import TrialRow


def data(
    tmp_path, rows: list[TrialRow], grid: dict, space: dict | None = None, method: dict | None = None
) -> SweepData:
    spec = parse_sweep(
        {
            "name": "r",
            "storage": str(tmp_path),
            "trial": {
                "data": {"dataset": "digits"},
                "threat": {"norm": "linf", "eps": 0.1},
                "method": method or {"kind": "sat", "fraction": 0.5},
            },
            "search": {"grid": grid, "space": space or {}, "num_samples": 1},
        }
    )
    trials = [Trial(f"run{i}", r, r.trial_id, {}) for i, r in enumerate(rows)]
    return SweepData("http://127.0.0.1:9", spec, "parent", "r-1", datetime.now(UTC), {}, trials, tmp_path)


def row(i: int, config: dict, clean: float, pgd: float, **more: float) -> TrialRow:
    return TrialRow(
        f"t{i}", "TERMINATED", config, {"eval/clean_acc": clean, "eval/pgd_acc": pgd, "proxy/pgd_acc": pgd, **more}
    )


def test_fraction_curves_are_means_and_spreads_over_seeds_per_line(tmp_path):
    rows = [
        row(0, {"method.fraction": 0.1, "method.ranking": "random"}, 0.9, 0.2),
        row(1, {"method.fraction": 0.1, "method.ranking": "random"}, 0.8, 0.4),
        row(2, {"method.fraction": 0.5, "method.ranking": "random"}, 0.7, 0.5),
        row(3, {"method.fraction": 0.1, "method.ranking": "entropy_hardest"}, 0.6, 0.1),
        row(4, {"method.fraction": 0.5, "method.ranking": "entropy_hardest"}, 0.5, 0.3),
    ]
    (drawn,) = fraction_curves(
        data(tmp_path, rows, {"method.fraction": [0.1, 0.5], "method.ranking": ["random", "entropy_hardest"]})
    )
    point = {(r["group"], r["fraction"], r["metric"]): r for r in drawn.table}
    assert point["ranking=random", 0.1, "eval/pgd_acc"]["mean"] == pytest.approx(0.3)
    assert point["ranking=random", 0.1, "eval/pgd_acc"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert point["ranking=entropy_hardest", 0.5, "eval/clean_acc"] | {"std": 0.0} == {
        "group": "ranking=entropy_hardest",
        "fraction": 0.5,
        "metric": "eval/clean_acc",
        "mean": 0.5,
        "std": 0.0,
        "n": 1,
    }
    assert len(drawn.table) == 8  # 2 lines x 2 fractions x (clean, robust)


def test_nothing_is_drawn_empty(tmp_path):
    one = data(tmp_path, [row(0, {"method.fraction": 0.3}, 0.9, 0.2)], {"method.fraction": [0.3]})
    assert fraction_curves(one) == [] and pareto(one) == [] and class_transfer(one) == []
    assert objective_vs_parameters(one) == []  # one value is no axis


def test_pareto_front_and_the_cost_panel_only_where_costs_differ(tmp_path):
    rows = [
        row(0, {"method.w_A": 1.0}, 0.9, 0.2, **{"train/grad_evals": 10.0}),
        row(1, {"method.w_A": 2.0}, 0.8, 0.3, **{"train/grad_evals": 10.0}),
        row(2, {"method.w_A": 4.0}, 0.7, 0.25, **{"train/grad_evals": 10.0}),
    ]
    space = {"method.w_A": {"loguniform": [0.5, 4]}}
    for r in rows:  # the select slice disagrees: there t2 is the most robust, and t1 is dominated
        r.metrics |= {
            "proxy/clean_acc": r.metrics["eval/clean_acc"],
            "proxy/pgd_acc": {"t1": 0.2, "t2": 0.4}.get(r.trial_id, 0.3),
        }
    (drawn,) = pareto(data(tmp_path, rows, {}, space))
    assert {r["trial"]: r["pareto"] for r in drawn.table} == {"t0": True, "t1": False, "t2": True}
    assert drawn.table[0]["panel"] == "proxy/pgd_acc vs proxy/clean_acc"  # a front is a choice: the select slice's
    assert len(drawn.figure.axes) == 1
    for r in rows:  # without select-slice numbers (an older sweep), the final slice's are drawn
        r.metrics = {k: v for k, v in r.metrics.items() if not k.startswith("proxy/")} | {"proxy/pgd_acc": 0.1}
    (drawn,) = pareto(data(tmp_path, rows, {}, space))
    assert {r["trial"]: r["pareto"] for r in drawn.table} == {"t0": True, "t1": True, "t2": False}


def test_params_read_back_as_the_values_they_were():
    assert [param_value(v) for v in ("0.5", "3", "random", "[1, 2]", "True", "1.0e-05")] == [
        0.5,
        3,
        "random",
        [1, 2],
        True,
        1e-05,
    ]


def test_class_transfer_heatmap_holds_the_matrix(tmp_path):
    names = [str(c) for c in range(10)]

    def classes_row(i: int, attacked: list[int]) -> TrialRow:
        per_class = {f"eval/class_pgd_acc/{c}": (0.8 if int(c) in attacked else 0.1) + i / 100 for c in names}
        return TrialRow(
            f"t{i}",
            "TERMINATED",
            {"method.classes": attacked},
            {**per_class, "eval/pgd_acc_A": 0.8, "eval/pgd_acc_B": 0.1},
        )

    sweep = data(
        tmp_path,
        [classes_row(0, [1]), classes_row(1, [2, 3])],
        {"method.classes": [[1], [2, 3]]},
        method={"kind": "sat", "split": "class", "classes": [1]},
    )
    (drawn,) = class_transfer(sweep)
    assert [r["attacked"] for r in drawn.table] == ["1", "2,3"]
    assert drawn.table[1]["3"] == "0.8100" and drawn.table[1]["1"] == "0.1100" and drawn.table[0]["B_val"] == "0.1000"


def test_transferred_robustness_by_the_sources_fraction_and_weighting(tmp_path):
    rows = [
        row(i, {"method.source": f"mlflow:s{i % 3}"}, 0.9, 0.5 + i / 10, **{"eval/aa_acc": 0.4 + i / 10})
        for i in range(6)
    ]
    sweep = data(
        tmp_path,
        rows,
        {"method.source": [f"mlflow:s{i}" for i in range(3)]},
        method={"kind": "transfer", "source": "mlflow:s0"},
    )
    sweep.sources = {
        "mlflow:s0": {"method.kind": "sat", "method.fraction": "0.1", "method.weighting": "vanilla"},
        "mlflow:s1": {"method.kind": "sat", "method.fraction": "0.5", "method.weighting": "vanilla"},
        "mlflow:s2": {"method.kind": "at"},
    }
    (drawn,) = transfer_by_fraction(sweep)
    by = {(r["source"], r["fraction"]): r for r in drawn.table}
    assert by["SAT vanilla", 0.1]["mean"] == pytest.approx((0.4 + 0.7) / 2) and by["SAT vanilla", 0.1]["n"] == 2
    assert by["at", ""]["mean"] == pytest.approx((0.6 + 0.9) / 2)  # a source without SAT: a reference line


def test_biamat_gate_follows_each_auxiliary_source_over_the_epochs(tmp_path):
    rows = [
        row(
            0,
            {"method.w_A": 1.0},
            0.9,
            0.5,
            **{"biamat/hi_ratio": 0.5, "biamat/hi_ratio/svhn": 0.4, "biamat/omega": 0.7},
        )
    ]
    sweep = data(tmp_path, rows, {"method.w_A": [1.0]})  # (the figure reads the metrics a BiaMAT trial logs)
    history = {"biamat/hi_ratio/svhn": [(0, 0.2), (1, 0.4)], "biamat/omega": [(0, 0.6), (1, 0.7)]}
    sweep._cache.update({("run0", k): v for k, v in history.items()})  # what MLflow would answer
    (drawn,) = biamat_gate(sweep)
    assert [(r["metric"], r["epoch"], r["value"]) for r in drawn.table] == [
        ("biamat/hi_ratio/svhn", 1, 0.2),
        ("biamat/hi_ratio/svhn", 2, 0.4),
        ("biamat/omega", 1, 0.6),
        ("biamat/omega", 2, 0.7),
    ]
    assert len(drawn.figure.axes) == 2


def test_the_page_shows_the_top_trials_and_says_where_every_trial_is(tmp_path):
    """A thousand trials on the page would be a scroll nobody reads: the top fifty, best first, then
    how many more and the CSV that holds them."""
    from satune.report.page import PAGE_ROWS, render
    from satune.sweep.summary import SweepResult, best_configuration, table
    from satune.sweep.verdicts import compare

    rows = [row(i, {"method.w_A": 1.0 + i}, 0.9, i / 1000) for i in range(1000)]
    d = data(tmp_path, rows, {}, space={"method.w_A": {"uniform": [1, 2000]}})
    d._comparison = compare(d.spec, rows, None)
    best, _ = best_configuration(d.spec, rows)
    page = render(d, [], table(d.spec, SweepResult(tmp_path, rows, best)), None, [], tmp_path)
    trials = page[page.index('<section id="trials">') :]
    assert trials.count("<tr>") == PAGE_ROWS + 1  # the header, then the top rows
    assert ">t999<" in trials and ">t0<" not in trials  # best first
    assert f"The top {PAGE_ROWS} of 1000 trials; the other {1000 - PAGE_ROWS} in" in trials
    assert '<a href="trials.csv">trials.csv</a>' in trials


def test_many_trials_draw_as_a_cloud_with_a_binned_median_not_a_wall_of_intervals(tmp_path):
    from satune.report.figures.parameters import BINS, MANY

    rows = [row(i, {"method.w_A": 0.5 + i / 100}, 0.8, 0.2 + i / 1000) for i in range(3 * MANY)]
    (drawn,) = objective_vs_parameters(data(tmp_path, rows, {}, space={"method.w_A": {"uniform": [0.5, 4]}}))
    clean, robust = drawn.figure.axes
    (median,) = [line for line in robust.get_lines() if "binned median" in str(line.get_label())]
    assert len(median.get_xdata()) == BINS and list(median.get_ydata()) == sorted(median.get_ydata())  # rising
    assert not robust.containers  # no error bars drawn per trial
    assert len(drawn.table) == 2 * 3 * MANY  # the numbers keep every trial, with its interval
    assert {"n", "lo95", "hi95"} <= set(drawn.table[0])
    assert f"one of {3 * MANY} trials" in drawn.caption
