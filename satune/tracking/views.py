"""What a person sees in MLflow's UI: the sweep's description and the saved view that compares its
trials."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satune.tracking.runs import client, set_tags
from satune.tracking.tags import CONFIG_TAG, NOTE_TAG, PARENT_TAG, REPEAT_TAG, VIEW_TAG_PREFIX

if TYPE_CHECKING:
    from satune.specs import SweepSpec

# --------------------------------------------------------------------------------------------
# The comparison view: the MLflow UI on a sweep's trials, optuna-dashboard on its studies


def sweep_description(sweep: SweepSpec, source: Path, run_dir: Path | str, report_link: str | None = None) -> str:
    """The parent run's description (markdown): what the sweep is, and where its trials and report are."""
    from satune.specs import RunsOf

    s, trial = sweep.search, sweep.trial
    goals = [f"{'maximise' if mode == 'max' else 'minimise'} `{m}`" for m, mode in zip(s.metrics, s.modes, strict=True)]
    grid = {
        key: f"the finished trials of sweep `{axis.runs_of}`" if isinstance(axis, RunsOf) else json.dumps(axis)
        for key, axis in s.grid.items()
    }
    lines = [
        f"Sweep **{sweep.name}**: a {s.algorithm} search of {s.trial_count} trials of "
        f"`{trial.method.kind}` on `{trial.data.dataset}` (`{trial.model.arch}`).",
        "",
        *(f"- **searched** `{key}`: {dom.kind} {json.dumps(list(dom.value))}" for key, dom in s.space.items()),
        *(f"- **grid** `{key}`: {values}" for key, values in grid.items()),
        f"- **objective**: {', '.join(goals)}" + (" (a Pareto front)" if len(goals) > 1 else ""),
    ]
    if s.repeats > 1:
        lines.append(f"- **repeats**: {s.repeats} seeds per configuration")
    lines += [
        f"- **report**: {f'[report/index.html]({report_link})' if report_link else '`report/index.html`'} in this "
        f"run's artifacts, drawn at the sweep's end (again by `satune report {source}`)",
        f"- **trials**: the child runs of this run; `satune ui {source}` lists them side by side",
        f"- **sweep file**: `{source.name}` in this run's artifacts (from `{source.resolve()}`)",
        f"- **run directory**: `{run_dir}` (Tune's state, the Optuna journal)",
    ]
    return "\n".join(lines) + "\n"


def artifact_link(experiment_id: str, run_id: str, path: str) -> str:
    """A link, relative to the MLflow UI's address, to a run's artifact shown in its Artifacts tab."""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{path}?workflowType=machine_learning"


def describe_sweep(uri: str, run_id: str, text: str) -> None:
    """`text` (markdown) as the run's description, on its page in the MLflow UI."""
    set_tags(uri, run_id, {NOTE_TAG: text})


def runs_view(sweep: SweepSpec, parent_id: str, metrics: list[str]) -> dict[str, Any]:
    """The state of MLflow's runs table that compares one sweep run's trials: its child runs in one
    flat list (sorting by a metric un-nests them; a saved view cannot expand rows), best first by
    the first searched metric, the searched keys and `metrics` as columns."""
    params = [*sweep.search.space, *sweep.search.grid]
    tags = [CONFIG_TAG, REPEAT_TAG] if sweep.search.repeats > 1 else []
    return {
        "searchFilter": f"tags.`{PARENT_TAG}` = '{parent_id}'",
        "orderByKey": f"metrics.`{sweep.search.metrics[0]}`",
        "orderByAsc": sweep.search.modes[0] == "min",
        "selectedColumns": [f"params.`{k}`" for k in params]
        + [f"metrics.`{k}`" for k in metrics]
        + [f"tags.`{k}`" for k in tags],
    }


def save_view(uri: str, experiment_id: str, view_id: str, name: str, state: Mapping[str, Any]) -> None:
    """Save `state` as the experiment's view `view_id`, in the envelope of the UI's "Views" menu."""
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client(uri).set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + view_id, json.dumps(envelope))


def trials_view(uri: str, sweep: SweepSpec, experiment_id: str, parent_id: str, metrics: list[str], name: str) -> str:
    """Save the view of one sweep run's trials (runs_view) as `name`; the link that opens it."""
    view_id = f"satune-{parent_id}"
    save_view(uri, experiment_id, view_id, name, runs_view(sweep, parent_id, metrics))
    return runs_link(uri, experiment_id, view_id)


def runs_link(uri: str, experiment_id: str, view_id: str) -> str:
    """The experiment's runs page in the model-training view (not GenAI's), showing saved view `view_id`."""
    return f"{uri}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={view_id}"
