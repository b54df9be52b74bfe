"""`satune ui` on a real sweep in local mode (satune serves the MLflow store): the link it prints opens
the sweep's trials in MLflow's model-training view, the parent run says what the sweep is,
optuna-dashboard names the objective after its metric, and Ctrl-C stops both servers. Pages are
opened in headless Chromium as a user opens them."""

import os
import re
import signal
import subprocess
import threading
import urllib.request
from typing import NamedTuple

import pytest
from conftest import kill_session, satune, screenshot, smoke_file, start_satune, wait_until
from mlflow.entities import Experiment, Run
from mlflow.tracking import MlflowClient

from satune.tracking import EXPERIMENT_KIND_TAG, ML_EXPERIMENT, NOTE_TAG, PARENT_TAG, SWEEP_TAG, free_port

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# The UI asks every server who is signed in; only MLflow's basic-auth app serves this, a plain
# `mlflow server` answers 404 and the browser logs it as a console error.
SIGNED_IN_USER = "/ajax-api/2.0/mlflow/users/current"


class Served(NamedTuple):
    proc: subprocess.Popen
    mlflow: str  # the MLflow UI
    link: str  # what satune ui prints for the sweep's trials
    dashboard: str  # optuna-dashboard
    experiment: Experiment
    parent: Run
    children: list[Run]


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_address):
    """A 2-trial TPE sweep over w_A in local mode (with its report), then `satune ui` on it."""
    tmp_path = tmp_path_factory.mktemp("ui")
    sweep = smoke_file(tmp_path, "ui", None, **{"trial.train.epochs": 1})
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    proc = start_satune("ui", sweep, "--port", free_port(), "--optuna-port", free_port(), "--no-open")
    lines = read_lines(proc)
    try:
        wait_until("the links of satune ui", lambda: any(x.startswith("optuna-dashboard: ") for x in lines), proc, 120)
        mlflow = re.fullmatch(r"MLflow UI: (\S+)  \(Ctrl-C stops it\)", lines[0])[1]
        link = re.fullmatch(r"the trials of .+/runs/ui/\d{8}-\d{6}: (\S+)", lines[1])[1]
        dashboard = lines[2].removeprefix("optuna-dashboard: ")
        client = MlflowClient(mlflow)
        experiment = client.get_experiment_by_name("ui")
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [r for r in runs if SWEEP_TAG in r.data.tags]
        children = [r for r in runs if PARENT_TAG in r.data.tags]
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        yield Served(proc, mlflow, link, dashboard, experiment, parent, children)
    finally:
        kill_session(proc)


def read_lines(proc: subprocess.Popen) -> list[str]:
    """The lines `proc` prints, appended as they come by a thread of their own."""
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def explained_errors(page) -> list[str]:
    """Console errors the page will log for SIGNED_IN_USER, as `page.problems` words them."""
    seen: list[str] = []

    def note(message) -> None:
        if message.type == "error" and message.location["url"].endswith(SIGNED_IN_USER):
            seen.append(f"console: {message.text}")

    page.on("console", note)
    return seen


def real_problems(page, explained: list[str]) -> list[str]:
    problems = list(page.problems)
    for problem in explained:
        problems.remove(problem)
    return problems


def table_rows(page) -> list[dict[str, str]]:
    """The runs table, top to bottom, as {column id: text}; the grid splits each row between its
    pinned and scrolling parts, which share a row index."""
    return page.evaluate("""() => {
        const rows = [];
        for (const row of document.querySelectorAll('[role=row][row-index]')) {
            const cells = rows[+row.getAttribute('row-index')] ??= {};
            for (const cell of row.querySelectorAll('[role=gridcell][col-id]'))
                cells[cell.getAttribute('col-id')] = cell.innerText;
        }
        return rows;
    }""")


def test_the_link_lists_the_sweeps_trials_in_the_model_training_view(served, page):
    explained = explained_errors(page)
    page.goto(served.link)
    for child in served.children:
        page.get_by_role("link", name=child.info.run_name).wait_for()
    shot = screenshot(page, "mlflow-ui")

    headers = set(page.locator("[role=columnheader]").all_inner_texts())
    assert {"method.w_A", "proxy/pgd_acc", "eval/pgd_acc", "eval/clean_acc"} <= headers, f"{headers} ({shot})"
    rows = table_rows(page)
    by_name = {c.info.run_name: c for c in served.children}
    listed = [by_name[r["attributes.`Run Name`"].splitlines()[-1]] for r in rows]
    assert sorted(c.info.run_name for c in listed) == sorted(by_name)
    proxies = [c.data.metrics["proxy/pgd_acc"] for c in listed]
    assert proxies == sorted(proxies, reverse=True)  # best first (a tie may list either first)
    for row, child in zip(rows, listed, strict=True):
        assert row["params.`method.w_A`"] == child.data.params["method.w_A"]
        for metric in ("proxy/pgd_acc", "eval/pgd_acc", "eval/clean_acc"):
            assert float(row[f"metrics.`{metric}`"]) == child.data.metrics[metric]

    body = page.inner_text("body")  # the model-training sidebar, not GenAI's overview
    genai = [w for w in ("Token usage", "Evaluation runs", "Sessions") if w in body]
    assert "Model registry" in body and not genai, shot
    assert real_problems(page, explained) == [], shot


def test_the_parent_run_says_what_the_sweep_is(served, page):
    assert served.experiment.tags[EXPERIMENT_KIND_TAG] == ML_EXPERIMENT
    note = served.parent.data.tags[NOTE_TAG]
    assert note.startswith("Sweep **ui**: a tpe search of 2 trials of `sat` on `digits` (`small_cnn`).")
    assert "- **report**: [report/index.html](#/experiments/" in note

    explained = explained_errors(page)
    experiment, parent = served.experiment.experiment_id, served.parent.info.run_id
    page.goto(f"{served.mlflow}/#/experiments/{experiment}/runs/{parent}?workflowType=machine_learning")
    page.get_by_text("a tpe search of 2 trials of").wait_for()  # the description, rendered
    page.get_by_text("Show more").click()
    shot = screenshot(page, "mlflow-parent-run")
    assert real_problems(page, explained) == [], shot
    with page.context.expect_page() as opened:  # the report, one click away (MLflow opens links in a new tab)
        page.get_by_role("link", name="report/index.html").click()
    report = opened.value
    report.frame_locator("iframe").get_by_text("Sweep ui").wait_for()  # MLflow shows the HTML artifact in a frame
    images = report.frame_locator("iframe").locator("img")
    assert images.count() >= 3 and all(w > 0 for w in images.evaluate_all("(l) => l.map((i) => i.naturalWidth)"))
    screenshot(report, "mlflow-report-artifact")


def test_optuna_dashboard_names_the_objective_after_its_metric(served, page):
    page.goto(served.dashboard)
    page.get_by_text("0. ui", exact=True).click()  # the sweep's study, as a user opens it
    page.get_by_text("proxy/pgd_acc").first.wait_for()  # the history plot's axis
    shot = screenshot(page, "optuna-dashboard")
    assert "Objective 0" not in page.inner_text("body"), shot
    assert page.problems == [], shot


def test_ctrl_c_stops_both_servers(served):
    os.killpg(served.proc.pid, signal.SIGINT)  # what a terminal sends its foreground job
    assert served.proc.wait(timeout=60) == 130
    for url in (served.mlflow + "/health", served.dashboard):
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=5)
