"""The comparison view's pure parts: the parent run's description, the saved view of a sweep run's
trials and the link that opens it, checked against the names MLflow's UI bundle reads; and the
objective names that optuna-dashboard shows."""

from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from satune import tracking
from satune.specs import parse_sweep
from satune.sweep.rundir import JOURNAL_FILE
from satune.tune.tuner import _tune_config


def sweep(tmp_path, **search):
    return parse_sweep(
        {
            "name": "wa",
            "storage": str(tmp_path / "runs"),
            "trial": {
                "data": {"dataset": "digits"},
                "threat": {"norm": "linf", "eps": 0.1},
                "method": {"kind": "sat", "fraction": 0.5},
            },
            "search": {"space": {"method.w_A": {"loguniform": [0.5, 4]}}, "num_samples": 3, **search},
        }
    )


def test_the_view_lists_one_runs_trials_flat_best_first_with_the_searched_columns(tmp_path):
    view = tracking.runs_view(sweep(tmp_path), "p1", ["proxy/pgd_acc", "proxy/clean_acc"])
    assert view == {
        "searchFilter": "tags.`mlflow.parentRunId` = 'p1'",
        "orderByKey": "metrics.`proxy/pgd_acc`",
        "orderByAsc": False,
        "selectedColumns": ["params.`method.w_A`", "metrics.`proxy/pgd_acc`", "metrics.`proxy/clean_acc`"],
    }


def test_the_view_sorts_a_minimised_metric_up_and_shows_grid_axes_and_repeats(tmp_path):
    spec = sweep(tmp_path, metric="proxy/clean_acc", mode="min", repeats=2, grid={"method.fraction": [0.3, 0.5]})
    view = tracking.runs_view(spec, "p1", ["proxy/clean_acc"])
    assert view["orderByKey"] == "metrics.`proxy/clean_acc`" and view["orderByAsc"] is True
    assert view["selectedColumns"] == [
        "params.`method.w_A`",
        "params.`method.fraction`",
        "metrics.`proxy/clean_acc`",
        "tags.`satune.config`",
        "tags.`satune.repeat`",
    ]


def test_the_link_opens_the_saved_view_in_the_model_training_view():
    assert tracking.runs_link("http://127.0.0.1:5000", "3", "satune-p1") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=satune-p1"
    )


def test_the_description_says_what_the_sweep_is_and_where_its_report_is(tmp_path):
    spec = sweep(tmp_path, grid={"method.fraction": [0.3, 0.5]}, metric=["proxy/clean_acc", "proxy/pgd_acc"])
    link = tracking.artifact_link("3", "p1", "report/index.html")
    text = tracking.sweep_description(spec, Path("sweeps/wa.yaml"), tmp_path / "runs" / "wa" / "20260101-120000", link)
    assert text.startswith("Sweep **wa**: a tpe search of 6 trials of `sat` on `digits` (`small_cnn`).\n")
    for line in [
        "- **searched** `method.w_A`: loguniform [0.5, 4.0]",
        "- **grid** `method.fraction`: [0.3, 0.5]",
        "- **objective**: maximise `proxy/clean_acc`, maximise `proxy/pgd_acc` (a Pareto front)",
        "- **trials**: the child runs of this run; `satune ui sweeps/wa.yaml` lists them side by side",
        f"- **sweep file**: `wa.yaml` in this run's artifacts (from `{Path('sweeps/wa.yaml').resolve()}`)",
        "- **report**: [report/index.html](#/experiments/3/runs/p1/artifactPath/report/index.html"
        "?workflowType=machine_learning) in this run's artifacts, drawn at the sweep's end (again by "
        "`satune report sweeps/wa.yaml`)",
    ]:
        assert line in text.splitlines()
    assert "repeats" not in text


@pytest.fixture(scope="module")
def ui_bundle() -> str:
    return "".join(f.read_text() for f in (Path(mlflow.__file__).parent / "server/js/build/static/js").glob("*.js"))


@pytest.mark.parametrize(
    "name",
    [
        tracking.NOTE_TAG,
        tracking.VIEW_TAG_PREFIX,
        tracking.EXPERIMENT_KIND_TAG,
        tracking.ML_EXPERIMENT,
        "viewStateShareKey",
        '.get("workflowType")',
        '"machine_learning"',
        '"selectedColumns"',
        '"searchFilter"',
        '"orderByKey"',
        '"orderByAsc"',
    ],
)
def test_the_installed_mlflow_ui_reads_these_names(ui_bundle, name):
    """What the view relies on, as the pinned MLflow's compiled UI spells it: an upgrade that renames
    one fails here, not in a user's browser."""
    assert name in ui_bundle


def test_every_study_names_its_objectives_after_the_metrics(tmp_path):
    """What optuna-dashboard shows instead of "Objective 0": one study per grid cell, each named."""
    spec = sweep(tmp_path, metric=["proxy/clean_acc", "proxy/pgd_acc"], grid={"method.fraction": [0.3, 0.5]})
    (tmp_path / "run").mkdir()
    _tune_config(spec, tmp_path / "run")
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "run" / JOURNAL_FILE)))
    names = optuna.get_all_study_names(storage)
    assert len(names) == 2
    for name in names:
        assert optuna.load_study(study_name=name, storage=storage).metric_names == ["proxy/clean_acc", "proxy/pgd_acc"]
