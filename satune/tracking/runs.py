"""MLflow runs through `MlflowClient` with explicit run ids and an http:// URI: the sweep's parent
run, one child run per trial, their params, metrics, tags and artifacts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from satune.tracking.server import TrackingError, check_reachable
from satune.tracking.tags import (
    EXPERIMENT_KIND_TAG,
    ML_EXPERIMENT,
    ORPHAN_TAG,
    PARENT_TAG,
    SWEEP_NAME_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)

# --------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class RunRecord:
    """A run as satune reads it: MLflow's entities stay inside tracking/, so a backend (or an MLflow
    upgrade that changes them) has one seam. `metrics` holds each metric's latest value."""

    run_id: str
    name: str
    status: str  # RUNNING | FINISHED | FAILED | KILLED
    experiment_id: str
    start_time: int  # ms since the epoch
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    end_time: int | None = None  # ms since the epoch; None while it runs

    @property
    def trial_id(self) -> str | None:
        return self.tags.get(TRIAL_TAG)


_ARTIFACT_URIS: dict[str, str] = {}  # run id -> its artifact root, from every run read: downloads skip a lookup


def _record(run) -> RunRecord:
    info, data = run.info, run.data
    _ARTIFACT_URIS[info.run_id] = info.artifact_uri
    return RunRecord(
        info.run_id,
        info.run_name,
        info.status,
        info.experiment_id,
        info.start_time,
        dict(data.params),
        dict(data.metrics),
        dict(data.tags),
        info.end_time,
    )


def client(uri: str):
    """One client per server and process (it holds the server's connection pool)."""
    # Ending a run prints "View run ..." links on stdout: noise between satune's own lines and tables.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return _client(uri)


@cache
def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def _params(tree: Mapping) -> dict[str, str]:
    """MLflow params: strings of at most 6000 characters, lists as JSON. An unset field (None) is
    left out rather than logged as "None": the trial logs the value it resolves (log_new_params)."""
    return {
        k: (json.dumps(v) if isinstance(v, (list, tuple)) else str(v))[:6000]
        for k, v in flatten(tree).items()
        if v is not None
    }


def ensure_experiment(uri: str, name: str) -> str:
    """Create the experiment on the driver (trials creating it at once would race)."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name, tags={EXPERIMENT_KIND_TAG: ML_EXPERIMENT})
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:  # a kind the user chose in the UI stays
        c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, ML_EXPERIMENT)
    return exp.experiment_id


def start_parent(uri: str, *, experiment_id: str, name: str, params: Mapping, tags: Mapping[str, str]) -> str:
    c = client(uri)
    run = c.create_run(experiment_id, run_name=name, tags={SWEEP_TAG: name, **tags})
    c.log_batch(run.info.run_id, params=[_param(k, v) for k, v in _params(params).items()])
    return run.info.run_id


def reopen(uri: str, run_id: str) -> None:
    client(uri).update_run(run_id, status="RUNNING")


def end_run(uri: str, run_id: str, status: str) -> None:
    """status: FINISHED | FAILED | KILLED."""
    client(uri).set_terminated(run_id, status=status)


def log_metrics(
    uri: str,
    run_id: str,
    metrics: Mapping[str, float],
    step: int | None = None,
    tags: Mapping[str, object] | None = None,
) -> None:
    """`tags` go with the last batch of metrics: one request, which the server stores at once, so a
    tag can say that the metrics are in, even when the process is killed while it logs."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    rows = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
    batches = [rows[i : i + 1000] for i in range(0, len(rows), 1000)] or [[]]  # the REST API takes 1000 at most
    for i, batch in enumerate(batches):
        last = [RunTag(k, str(v)) for k, v in (tags or {}).items()] if i == len(batches) - 1 else []
        client(uri).log_batch(run_id, metrics=batch, tags=last)


class LogBehind:
    """A trial's per-epoch metrics sent while the next epoch trains: one request in flight at a time,
    waited for (`wait`) before anything that must come after it. A request lost with its process is
    not lost to the run: the epoch is in Tune's checkpoint, and a restored trial logs what its run lacks."""

    def __init__(self, uri: str, run_id: str):
        from concurrent.futures import Future, ThreadPoolExecutor

        self.uri, self.run_id = uri, run_id
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="satune-log")
        self._sent: Future | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.wait()
        self._sent = self._pool.submit(log_metrics, self.uri, self.run_id, dict(metrics), step)

    def wait(self) -> None:
        """The request in flight, done (its error raised here)."""
        sent, self._sent = self._sent, None
        if sent is not None:
            sent.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def log_dict(uri: str, run_id: str, data: Any, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_text(json.dumps(data, indent=2) + "\n")
        client(uri).log_artifact(run_id, str(path))


def log_file(uri: str, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    client(uri).log_artifact(run_id, str(path), artifact_path)


def log_text(uri: str, run_id: str, text: str, name: str) -> None:
    """`text` as the artifact `name` (a path inside the run's artifacts)."""
    client(uri).log_text(run_id, text, name)


def download(uri: str, run_id: str, name: str, into: Path) -> Path:
    """A run's artifact `name`, fetched through the server into the folder `into`: two requests (is it a
    folder, the file) once the run's artifact root is known, where MLflow's download by run id makes
    about ten (the run, its logged models, ...) for each file: a report reads one or two per trial."""
    from mlflow.artifacts import download_artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file drowns the output
    root = _ARTIFACT_URIS.get(run_id) or client(uri).get_run(run_id).info.artifact_uri
    _ARTIFACT_URIS[run_id] = root
    return Path(download_artifacts(artifact_uri=f"{root}/{name}", dst_path=str(into), tracking_uri=uri))


def read_artifact(uri: str, run_id: str, name: str) -> str | None:
    """A run's artifact `name` as text; None when the run has none of that name. Asked directly (two
    requests), not listed first: a failure is a missing file only while the server answers."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="satune-artifact-") as tmp:
        try:
            return download(uri, run_id, name, Path(tmp)).read_text()
        except MlflowException:
            check_reachable(uri)  # a server that went away is an error, never a missing file
            return None


def get_run(uri: str, run_id: str) -> RunRecord:
    """A run; a TrackingError naming it when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return _record(client(uri).get_run(run_id))
    except MlflowException as exc:
        raise TrackingError(f"no MLflow run {run_id} at {uri} ({exc.error_code})") from None


def set_tags(uri: str, run_id: str, tags: Mapping[str, object]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def log_new_params(uri: str, run_id: str, params: Mapping[str, Any], have: Collection[str] | None = None) -> None:
    """Log the params the run does not have yet (params cannot change once logged; a resumed
    trial resolves the same values again). `have`: the names it has, when known (else asked)."""
    if have is None:
        have = client(uri).get_run(run_id).data.params
    new = {k: v for k, v in _params(params).items() if k not in have}
    if new:
        client(uri).log_batch(run_id, params=[_param(k, v) for k, v in new.items()])


def trial_run(
    uri: str,
    *,
    experiment_id: str,
    parent_id: str,
    trial_id: str,
    name: str,
    spec: Mapping,
    run_id: str | None,
    tags: Mapping[str, object] | None = None,
) -> TrialRun:
    """The child run of a trial: the one in its checkpoint, else the one tagged with its id, else new;
    tagged with `tags` (in the request that creates it).

    Looking up by tag too means a trial retried before its first checkpoint still continues its
    own run: never two runs for one trial.
    """
    c = client(uri)
    if run_id is None:
        found = runs_of_trial(uri, experiment_id, parent_id, trial_id)
        run_id = found[0].run_id if found else None
    tags = {k: str(v) for k, v in (tags or {}).items()}
    if run_id is not None:
        c.update_run(run_id, status="RUNNING")
        set_tags(uri, run_id, tags)
        return TrialRun(run_id, created=False, params=frozenset())
    run = c.create_run(experiment_id, run_name=name, tags={PARENT_TAG: parent_id, TRIAL_TAG: trial_id, **tags})
    params = _params(spec)
    c.log_batch(run.info.run_id, params=[_param(k, v) for k, v in params.items()])
    return TrialRun(run.info.run_id, created=True, params=frozenset(params))


@dataclass(frozen=True)
class TrialRun:
    """A trial's run as this attempt found it. `created`: by this attempt, so nothing but `params`
    (their names) is logged in it yet, and what a re-opened run must be asked need not be."""

    run_id: str
    created: bool
    params: frozenset[str]


def metric_steps(uri: str, run_id: str, key: str) -> set[int]:
    """The steps at which `run_id` has logged `key`."""
    return {m.step for m in client(uri).get_metric_history(run_id, key)}


def finished_trials(uri: str, sweep_name: str) -> list[RunRecord]:
    """The FINISHED trial runs of the newest parent run of sweep `sweep_name`, in any experiment of
    this store, oldest first."""
    parents = sweep_parents(uri, sweep_name)
    if not parents:
        return []
    runs = child_runs(uri, parents[0].experiment_id, parents[0].run_id)
    return sorted((r for r in runs if r.status == "FINISHED"), key=lambda r: r.start_time)


def runs_of_trial(uri: str, experiment_id: str, parent_id: str, trial_id: str) -> list[RunRecord]:
    """The run of one trial (a list: none before it opened one), found by its tags on the server,
    without reading its siblings."""
    found = client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=10,
    )
    return [_record(r) for r in found]


PAGE = 1000  # runs per search request: a sweep may hold up to specs.MAX_TRIALS


def child_runs(uri: str, experiment_id: str, parent_id: str) -> list[RunRecord]:
    """Every run of a sweep's trials (page by page: one request per thousand)."""
    records: list[RunRecord] = []
    token = None
    while True:
        found = client(uri).search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=PAGE, page_token=token
        )
        records += [_record(r) for r in found]
        token = found.token
        if not token:
            return records


def discard(uri: str, run_id: str, why: str) -> None:
    """Delete a run (MLflow keeps deleted runs, restorable), tagged with why."""
    c = client(uri)
    c.set_tag(run_id, ORPHAN_TAG, why)
    c.delete_run(run_id)


def sweep_parents(uri: str, sweep_name: str) -> list[RunRecord]:
    """The parent runs of sweep `sweep_name` in any experiment of this store, newest first."""
    c = client(uri)
    experiments = [e.experiment_id for e in c.search_experiments()]
    found = c.search_runs(
        experiments,
        filter_string=f"tags.`{SWEEP_NAME_TAG}` = '{sweep_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    return [_record(r) for r in found]


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of `key`, by step."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def artifact_paths(uri: str, run_id: str, folder: str | None = None) -> list[str]:
    """The artifact files of a run under `folder`, recursively."""
    out: list[str] = []
    for f in client(uri).list_artifacts(run_id, folder):
        out += artifact_paths(uri, run_id, f.path) if f.is_dir else [f.path]
    return out


def provenance() -> dict[str, str]:
    """Git commit and package versions, for the parent run's tags."""
    from importlib.metadata import PackageNotFoundError, version

    tags = {}
    for pkg in ("satune", "torch", "ray", "optuna", "mlflow", "pyautoattack"):
        try:
            tags[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            pass
    git = shutil.which("git")
    if git:
        here = Path(__file__).resolve().parent
        sha = subprocess.run([git, "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True)
        if sha.returncode == 0:
            tags["git.sha"] = sha.stdout.strip()
            dirty = subprocess.run([git, "status", "--porcelain"], cwd=here, capture_output=True, text=True)
            tags["git.dirty"] = str(bool(dirty.stdout.strip())).lower()
    return tags
