"""A finished sweep read back through MLflow's client: its spec as it ran, its trials (values,
metrics, tags), their metric histories and artifacts, and its Optuna studies. No Ray."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from satune import tracking
from satune.errors import UserError
from satune.specs import SweepSpec, parse_sweep
from satune.sweep import verdicts
from satune.sweep.rundir import JOURNAL_FILE, run_dir_named
from satune.sweep.summary import REPEAT_KEY, TrialRow
from satune.tracking.tags import REPEAT_TAG


class ReportError(UserError):
    """Nothing to report on; one line for the user."""


@dataclass
class Trial:
    run_id: str
    row: TrialRow  # trial id, status as Tune says it (TERMINATED for finished), values, latest metrics
    name: str
    tags: dict[str, str]


@dataclass
class SweepData:
    uri: str
    spec: SweepSpec
    parent_id: str
    parent_name: str
    started: datetime
    tags: dict[str, str]
    trials: list[Trial]
    run_dir: Path  # where satune keeps this run's files (Tune's, Optuna's): on this machine or not
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # transfer: mlflow:<id> -> its params
    _cache: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    _comparison: verdicts.Comparison | None = field(default=None, repr=False)

    @property
    def comparison(self) -> verdicts.Comparison:
        """The best configuration against the others (computed once: the report, its tables and the API share it)."""
        if self._comparison is None:
            self._comparison = verdicts.compare(self.spec, self.rows, self.outcomes_of)
        return self._comparison

    def outcomes_of(self, row: TrialRow, metric: str) -> list[str] | None:
        """A trial's per-example outcomes behind a reported metric (a verdicts.OutcomeReader)."""
        trial = next(t for t in self.trials if t.row is row)
        name = verdicts.outcome_file(metric, self.final_labels(trial))
        text = None if name is None else self.artifact_text(trial, name)
        return None if text is None else verdicts.outcome_column(text, dict(verdicts.REPORTED)[metric])

    @property
    def optimistic(self) -> bool:
        return self.spec.search.select_on == "final"

    @property
    def journal(self) -> Path | None:
        """The sweep's Optuna journal, where this machine can read it."""
        path = self.run_dir / JOURNAL_FILE
        return path if path.exists() else None

    @property
    def finished(self) -> list[Trial]:
        return [t for t in self.trials if t.row.status == "TERMINATED"]

    @property
    def rows(self) -> list[TrialRow]:
        return [t.row for t in self.trials]

    def history(self, trial: Trial, key: str) -> list[tuple[int, float]]:
        if (trial.run_id, key) not in self._cache:
            self._cache[trial.run_id, key] = tracking.metric_history(self.uri, trial.run_id, key)
        return self._cache[trial.run_id, key]

    def artifact_text(self, trial: Trial, name: str) -> str | None:
        """A run's artifact as text, or None when it has none of that name."""
        if (trial.run_id, name) not in self._cache:
            self._cache[trial.run_id, name] = tracking.read_artifact(self.uri, trial.run_id, name)
        return self._cache[trial.run_id, name]

    def final_labels(self, trial: Trial) -> list[str]:
        """The labels of the trial's final-stage evaluations (`final/<label>/card.json`), oldest first."""
        if (trial.run_id, "final/") not in self._cache:
            # A run that was never evaluated has no final tag: no listing of its artifacts to ask the server for.
            evaluated = tracking.FINAL_TAG in trial.tags
            paths = tracking.artifact_paths(self.uri, trial.run_id, "final") if evaluated else []
            self._cache[trial.run_id, "final/"] = verdicts.final_labels(paths)
        return self._cache[trial.run_id, "final/"]


def find_sweep(uri: str, name: str, echo: Callable[[str], None]) -> SweepData:
    """The newest run of sweep `name` in the store at `uri`, with its trials, read with the spec it
    ran with (from its parent run: the file may have changed since)."""
    parents = tracking.sweep_parents(uri, name)
    if not parents:
        raise ReportError(f"no run of sweep '{name}' at {uri}: run `satune sweep` first")
    return read_sweep(uri, parents[0], echo)


def find_parent(uri: str, run_id: str, echo: Callable[[str], None]) -> SweepData:
    """The sweep whose parent run is `run_id`."""
    parent = tracking.get_run(uri, run_id)
    if tracking.SWEEP_NAME_TAG not in parent.tags:
        raise ReportError(
            f"run {run_id} at {uri} is not a sweep's parent run (it has no {tracking.SWEEP_NAME_TAG} tag)"
        )
    return read_sweep(uri, parent, echo)


def read_sweep(uri: str, parent, echo: Callable[[str], None]) -> SweepData:
    """A sweep from its parent run (an MLflow Run: read here only)."""
    name = parent.tags[tracking.SWEEP_NAME_TAG]
    with tempfile.TemporaryDirectory() as tmp:
        data = json.loads(tracking.download(uri, parent.run_id, "resolved_spec.json", Path(tmp)).read_text())
    spec = parse_sweep(data, source=f"run {parent.run_id}")
    children = tracking.child_runs(uri, parent.experiment_id, parent.run_id)
    echo(f"report: sweep {name}, parent run {parent.run_id}, {len(children)} trial runs at {uri}")
    keys = [*spec.search.grid, *spec.search.space]
    trials = []
    for r in sorted(children, key=lambda r: r.start_time):
        trial_id = r.trial_id
        if trial_id is None:
            continue
        config = {k: param_value(r.params[k]) for k in keys if k in r.params}
        if spec.search.repeats > 1:
            config[REPEAT_KEY] = int(r.tags.get(REPEAT_TAG, 0))
        seed = r.params.get("seed")
        status = "TERMINATED" if r.status == "FINISHED" else r.status
        row = TrialRow(trial_id, status, config, dict(r.metrics), seed=int(seed) if seed else None)
        trials.append(Trial(r.run_id, row, r.name, dict(r.tags)))
    run_dir = run_dir_named(spec, parent.name.removeprefix(f"{name}-"))
    data_ = SweepData(
        uri,
        spec,
        parent.run_id,
        parent.name,
        datetime.fromtimestamp(parent.start_time / 1000, tz=UTC),
        dict(parent.tags),
        trials,
        run_dir,
    )
    if not data_.finished:
        raise ReportError(f"sweep '{name}' (run {parent.name}) has no finished trial yet: nothing to draw")
    if "method.source" in spec.search.grid:
        data_.sources = _sources(uri, {str(t.row.config.get("method.source")) for t in data_.finished})
    return data_


def _sources(uri: str, sources: set[str]) -> dict[str, dict[str, str]]:
    """What each transfer source is: the params of its MLflow run, and its repeat (a folder source: none)."""
    out = {}
    for s in sources:
        if s.startswith("mlflow:"):
            run = tracking.get_run(uri, s.removeprefix("mlflow:"))
            out[s] = dict(run.params) | {"repeat": run.tags.get(REPEAT_TAG, "0")}
    return out


def param_value(text: str) -> Any:
    """An MLflow param (a string) back to the value it was: YAML reads numbers, lists and words."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
