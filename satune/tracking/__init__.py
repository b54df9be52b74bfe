"""MLflow: the local tracking server's lifecycle, the sweep's parent run, one child run per trial.

The only module that imports mlflow. Everything goes through `MlflowClient` with explicit run ids
and an http:// tracking URI: trials run in other processes (and directories) than the driver, and
MLflow's default URI is a SQLite file in the *current* directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from satune.errors import UserError
from satune.tracking.tags import *  # noqa: F403  (every tag name, as tracking.<NAME>_TAG)
from satune.tracking.tags import (
    CONFIG_TAG,
    EXPERIMENT_KIND_TAG,
    ML_EXPERIMENT,
    NOTE_TAG,
    ORPHAN_TAG,
    PARENT_TAG,
    REPEAT_TAG,
    SWEEP_NAME_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    VIEW_TAG_PREFIX,
)

if TYPE_CHECKING:
    from satune.specs import SweepSpec


class TrackingError(UserError):
    """The tracking server cannot be started or reached; a one-line message for the user."""


# --------------------------------------------------------------------------------------------
# The server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def watched(uri: str, patience: float, on_lost: Callable[[str], None], every: float = 2.0):
    """While the block runs, a server that has not answered for `patience` seconds is lost:
    `on_lost(why)` is called once (from another thread)."""
    from satune.watchdog import watched

    def probe() -> str | None:
        try:
            check_reachable(uri, timeout=every)
        except TrackingError:
            return f"the MLflow server at {uri} has not answered for {patience:.0f}s"
        return None

    return watched(probe, patience, on_lost, every, name="mlflow-watch")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any compute, when an MLflow server does not answer."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status == 200:
                return
            raise TrackingError(f"tracking.uri: {uri} answered {resp.status} on /health; is it an MLflow server?")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"tracking.uri: cannot reach the MLflow server at {uri} ({reason})") from None


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Before any run is created: the server answers, lets this client in, and runs this client's
    MLflow (major.minor; runs, logged models and the UI's tags change between minor versions)."""
    from importlib.metadata import version

    check_reachable(uri, timeout)
    request = urllib.request.Request(uri.rstrip("/") + "/version")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:  # a basic-auth server (docker/compose.auth.yaml) asks for them everywhere
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            theirs = resp.read().decode().strip()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise TrackingError(
                f"tracking.uri: the MLflow server at {uri} refused this client ({exc.code}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        raise TrackingError(f"tracking.uri: {uri} answered {exc.code} on /version; is it an MLflow server?") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise TrackingError(
            f"tracking.uri: cannot reach the MLflow server at {uri} ({getattr(exc, 'reason', exc)})"
        ) from None
    check_version_match(uri, theirs, version("mlflow"))


def check_version_match(uri: str, server: str, client: str) -> None:
    if server.split(".")[:2] != client.split(".")[:2]:
        raise TrackingError(
            f"version mismatch: the MLflow server at {uri} runs MLflow {server}, this client MLflow "
            f"{client}: install mlflow=={server} here, or run the server with mlflow=={client}"
        )


def store_paths(storage: Path) -> tuple[Path, Path]:
    """The local store under `storage`: the SQLite database and the artifact root."""
    root = Path(storage) / "mlflow"
    return root / "mlflow.db", root / "artifacts"


def server_command(db: Path, artifacts: Path, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def server_env() -> dict[str, str]:
    # Without the job runner the server is 2 processes and ~0.5 GB instead of ~2.3 GB.
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


_STOPS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _stops_held() -> Iterator[None]:
    """Ctrl-C (and SIGTERM) held back while the block forks, and raised again after it. Python
    drops a KeyboardInterrupt raised in its at-fork hooks ("Exception ignored"), and the sweep
    would carry on. Blocking the signals is not enough: another thread (Ray has several)
    takes the signal, and the main thread still runs the handler inside those hooks. Here the
    handler only notes it. (Handlers run in the main thread only: elsewhere nothing is dropped.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {stop: signal.signal(stop, lambda signum, _: held.append(signum)) for stop in _STOPS}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies, even by SIGKILL,
    so a killed sweep never leaves an orphaned server behind. (A no-op elsewhere.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 15)


@contextmanager
def serving(
    uri: str | None, storage: str, first: str, host: str = "127.0.0.1", port: int | None = None
) -> Iterator[tuple[str, LocalServer | None]]:
    """A finished sweep's tracking server, for reading it: its own `uri` (checked to answer), or in
    local mode (`uri` None) its store under `storage`, served while the block runs. `first`: the
    command that makes the store, named when there is none."""
    if uri is not None:
        check_reachable(uri)
        yield uri, None
        return
    if not store_paths(Path(storage))[0].exists():
        raise TrackingError(f"no MLflow store under {storage}: run `{first}` first")
    with LocalServer(Path(storage), host, port) as server:
        yield server.uri, server


class LocalServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store under `storage`, for one sweep."""

    def __init__(self, storage: Path, host: str = "127.0.0.1", port: int | None = None):
        self.db, self.artifacts = store_paths(storage)
        self.host, self.port = host, port or free_port(host)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.db.parent / "server.log"

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 120.0) -> LocalServer:
        self.launch()
        try:
            self.wait_healthy(timeout)
        except BaseException:  # Ctrl-C while it starts too: no server outlives the sweep
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """Start the server process and return at once (wait_healthy waits for it to answer)."""
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - the server writes here for its lifetime
        try:
            with _stops_held():
                self.proc = subprocess.Popen(
                    server_command(self.db, self.artifacts, self.host, self.port),
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=server_env(),
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        finally:
            logf.close()

    def wait_healthy(self, timeout: float = 120.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TrackingError(f"the local MLflow server exited at start; see {self.log_path}")
            try:
                check_reachable(self.uri, timeout=1.0)
                return
            except TrackingError:
                time.sleep(0.3)
        raise TrackingError(f"the local MLflow server did not answer within {timeout:.0f}s; see {self.log_path}")

    @contextmanager
    def restarted_when_dead(self, echo: Callable[[str], None], limit: int = 3) -> Iterator[LocalServer]:
        """While the block runs, a server that dies (killed, out of memory) starts again on the same
        store and port. Trials' requests wait meanwhile (MLflow's client retries with backoff), so
        nothing they log is lost. After `limit` restarts it stays down: trials then fail, resumably."""
        done = threading.Event()

        def watch() -> None:  # (the thread that starts a server must outlive it: _die_with_parent)
            restarts = 0
            while not done.wait(1.0):
                proc = self.proc
                if proc is None or proc.poll() is None:
                    continue
                if restarts == limit:
                    echo(
                        f"MLflow: the local server died {limit + 1} times; not starting it again (see {self.log_path})"
                    )
                    return
                restarts += 1
                echo(f"MLflow: the local server died (exit {proc.returncode}); starting it again on {self.uri}")
                try:
                    self.start()
                except TrackingError as exc:
                    echo(f"MLflow: {exc}")

        thread = threading.Thread(target=watch, name="mlflow-watchdog", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, 15)  # the server and its worker
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, 9)
        self.proc = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Runs


def client(uri: str):
    from mlflow.tracking import MlflowClient

    # Ending a run prints "View run ..." links on stdout: noise between satune's own lines and tables.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
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
    """A run's artifact `name`, fetched through the server into the folder `into`."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file drowns the output
    return Path(client(uri).download_artifacts(run_id, name, str(into)))


def get_run(uri: str, run_id: str):
    """A run (info, params, tags, latest metrics); a TrackingError naming it when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client(uri).get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"no MLflow run {run_id} at {uri} ({exc.error_code})") from None


def set_tags(uri: str, run_id: str, tags: Mapping[str, object]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def log_new_params(uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log the params the run does not have yet (params cannot change once logged; a resumed
    trial resolves the same values again)."""
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
    tags: Mapping[str, str] | None = None,
) -> str:
    """The child run of a trial: the one in its checkpoint, else the one tagged with its id, else new.

    Looking up by tag too means a trial retried before its first checkpoint still continues its
    own run: never two runs for one trial.
    """
    c = client(uri)
    if run_id is None:
        found = c.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1,
        )
        run_id = found[0].info.run_id if found else None
    if run_id is not None:
        c.update_run(run_id, status="RUNNING")
        return run_id
    run = c.create_run(experiment_id, run_name=name, tags={PARENT_TAG: parent_id, TRIAL_TAG: trial_id, **(tags or {})})
    c.log_batch(run.info.run_id, params=[_param(k, v) for k, v in _params(spec).items()])
    return run.info.run_id


def metric_steps(uri: str, run_id: str, key: str) -> set[int]:
    """The steps at which `run_id` has logged `key`."""
    return {m.step for m in client(uri).get_metric_history(run_id, key)}


def finished_trials(uri: str, sweep_name: str) -> list:
    """The FINISHED trial runs of the newest parent run of sweep `sweep_name`, in any experiment of
    this store, oldest first."""
    parents = sweep_parents(uri, sweep_name)
    if not parents:
        return []
    runs = child_runs(uri, parents[0].info.experiment_id, parents[0].info.run_id)
    return sorted((r for r in runs if r.info.status == "FINISHED"), key=lambda r: r.info.start_time)


def child_runs(uri: str, experiment_id: str, parent_id: str) -> list:
    return client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=5000
    )


def discard_orphan(uri: str, run_id: str) -> None:
    """A child run of a trial Tune never recorded: said why, ended, and deleted (restorable)."""
    c = client(uri)
    c.set_tag(
        run_id,
        ORPHAN_TAG,
        "its driver died before Ray Tune recorded the trial; --resume ran the configuration again as another trial",
    )
    if c.get_run(run_id).info.status == "RUNNING":
        c.set_terminated(run_id, "KILLED")
    c.delete_run(run_id)


def sweep_parents(uri: str, sweep_name: str) -> list:
    """The parent runs of sweep `sweep_name` in any experiment of this store, newest first."""
    c = client(uri)
    experiments = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(
        experiments,
        filter_string=f"tags.`{SWEEP_NAME_TAG}` = '{sweep_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )


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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a line per request would bury the links
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class StudyDashboard:
    """optuna-dashboard on a sweep's Optuna journal, served by a thread of this process."""

    def __init__(self, journal: Path, host: str = "127.0.0.1", port: int = 8080):
        self.journal, self.host, self.port = journal, host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> StudyDashboard:
        import optuna_dashboard
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        app = optuna_dashboard.wsgi(JournalStorage(JournalFileBackend(str(self.journal))))
        try:
            self._server = make_server(self.host, self.port, app, _ThreadingWSGIServer, _QuietHandler)
        except OSError as exc:
            raise TrackingError(f"cannot serve optuna-dashboard on {self.uri} ({exc.strerror})") from None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def serve_until_interrupted(servers: list[LocalServer | StudyDashboard]) -> None:
    """Block until Ctrl-C (KeyboardInterrupt) or until one of `servers` stops (TrackingError)."""
    while all(s.running for s in servers):
        time.sleep(0.5)
    stopped = next(s for s in servers if not s.running)
    log = f"; see {stopped.log_path}" if isinstance(stopped, LocalServer) else ""
    raise TrackingError(f"the server at {stopped.uri} stopped{log}")


def open_in_browser(url: str) -> None:
    """Open `url` where a graphical browser can show it; on a headless machine `webbrowser` would
    start a console browser in the terminal instead."""
    import webbrowser

    if sys.platform in ("darwin", "win32") or any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY")):
        webbrowser.open(url)
