"""`satune sweep`: Ray Tune runs the trials, Optuna proposes them, MLflow records them. This module
orchestrates its phases; Tune's run of the trials is tune/tuner.py, the sweep's state satune/sweep/.

One sweep run lives in `storage/<name>/<timestamp>/`: the sweep file and resolved spec
(`sweep.json`, which also names the MLflow parent run), the Optuna journal, and Tune's experiment
(`tune/`). The local MLflow store (`storage/mlflow/`) is shared by every sweep in `storage`, so
`satune ui` compares them all. `--resume` continues the newest unfinished run of the sweep.
With storage at an object store's URL, Tune writes there directly and satune copies its own
files up as they change (satune.sweep.store).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ray

from satune import tracking
from satune.specs import RunsOf, SweepSpec
from satune.specs.datafiles import missing_data
from satune.sweep import stopping, verdicts
from satune.sweep.rundir import RunDir, SweepError, prepare, writable_by_others
from satune.sweep.stopping import Stop, Stops, SweepInterrupted
from satune.sweep.summary import SweepResult, log_summary, source_label
from satune.tune import cluster, final_stage, tuner
from satune.tune.progress import echo_stderr

# --------------------------------------------------------------------------------------------
# The sweep


@dataclass
class _Open:
    """What the phases of a sweep hand on: its run directory, and once tracking is open, where."""

    sweep: SweepSpec
    source: Path
    run: RunDir
    echo: Callable[[str], None]
    stops: Stops
    uri: str | None = None
    experiment_id: str = ""
    parent: str | None = None
    prepared: ray.ObjectRef | None = None  # what every trial shares, computing while tracking opens

    @property
    def run_dir(self) -> Path:
        assert self.run.path is not None  # (claimed in the preflight)
        return self.run.path


def run_sweep(
    sweep: SweepSpec,
    source: Path,
    *,
    resume: bool = False,
    address: str | None = None,
    echo: Callable[[str], None] | None = None,
    report: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run (or resume) a sweep: preflight, open tracking, run the trials, the final stage, the summary
    and verdicts, the report, finish. An interrupt at any point (Ctrl-C, SIGTERM) ends with the state
    saved, the parent run KILLED and unfinished trials' runs KILLED: `--resume` continues it.
    `report(tracking_uri)` runs at the end, while the tracking server still runs."""
    echo = echo or echo_stderr
    at = _Open(sweep, source, prepare(sweep, source, resume), echo, Stops(echo))  # prepare writes nothing
    at.uri, at.parent = sweep.tracking.uri, at.run.state.get("parent_run_id")
    with at.stops.signals(), ExitStack() as stack:
        try:
            server, dashboard = _preflight(at, address or os.environ.get("SATUNE_RAY_ADDRESS"), stack)
            _open_tracking(at, server, stack)
            result = _run_trials(at, dashboard, resume)
            if at.sweep.final_eval is not None and not result.interrupted:
                # AutoAttack on the winners the select slice chose; it reports, never chooses.
                final_stage.run(
                    at.sweep,
                    result.rows,
                    uri=_uri(at),
                    experiment_id=at.experiment_id,
                    parent=_parent(at),
                    echo=at.echo,
                )
            _summarize(at, result)
            if report is not None and not result.interrupted:
                _report(at, report)
        except (Stop, KeyboardInterrupt) as stop:
            stopping.end_interrupted(at.run, at.echo, tracked=not at.stops.tracking_lost.is_set())
            reason = stop.reason if isinstance(stop, Stop) else "Ctrl-C"
            raise SweepInterrupted(at.run.path, reason) from None
        except BaseException:
            if at.run.path is not None:
                at.run.save(status="failed")
            if at.parent is not None and at.uri is not None and not at.stops.tracking_lost.is_set():
                tracking.end_run(at.uri, at.parent, "FAILED")
            raise
        return _finish(at, result)


def _uri(at: _Open) -> str:
    assert at.uri is not None  # (set when tracking opened)
    return at.uri


def _parent(at: _Open) -> str:
    assert at.parent is not None  # (set when tracking opened)
    return at.parent


def _preflight(at: _Open, address: str | None, stack: ExitStack) -> tuple[tracking.LocalServer | None, str | None]:
    """Before any run directory or MLflow run exists: the data, the user's MLflow server (answers,
    same version), the storage, the cluster (answers, takes our token, same versions, a node that
    fits a trial, one machine if MLflow is served locally). A local server starts while a private
    Ray does (each takes seconds). Ends with Ray up, the run directory claimed, and what the trials
    share (SAT's ranking) computing on a worker."""
    sweep = at.sweep
    _check_data(sweep, joined=bool(address), echo=at.echo)
    if at.uri is not None:
        tracking.check_server(at.uri)
    at.run.storage.check()
    if address:
        cluster.preflight(address)
    server = None
    if at.uri is None:
        server = tracking.LocalServer(Path(sweep.storage))
        stack.callback(server.stop)
        if not address:
            server.launch()  # while the private Ray starts; beside a cluster, once it passed the checks
    stack.callback(cluster.stop)
    dashboard = cluster.start(address)
    at.stops.take_sigterm()  # again: ray.init replaced it
    cluster.check_feasible(sweep.resources.cpu, sweep.resources.gpu, sweep.resources.label_selector)
    if server is not None and address:
        cluster.check_one_machine_for_local_tracking(address)
    run_dir = at.run.claim()
    shared = None if at.run.storage.remote else writable_by_others(run_dir)
    if shared is not None:
        at.echo(
            f"warning: {shared} is writable by other users, and --resume unpickles Tune's state from "
            "it: anyone who can write there can run code as you (docs/trust.md)"
        )
    at.prepared = _prepare(sweep, at.echo)  # on a worker, while the local MLflow server boots
    if server is not None and address:
        server.launch()
    return server, dashboard


def _open_tracking(at: _Open, server: tracking.LocalServer | None, stack: ExitStack) -> None:
    """The tracking server up and watched (and the object store), the parent run opened or re-opened."""
    sweep, echo, run = at.sweep, at.echo, at.run
    if server is not None:
        server.wait_healthy()
        stack.enter_context(server.restarted_when_dead(echo))
        at.uri = server.uri
        echo(f"MLflow: local server {at.uri} (store {server.db.parent}); `satune ui {at.source}` serves it later")
    else:
        echo(f"MLflow: {at.uri}")
    uri = _uri(at)
    stack.enter_context(
        tracking.watched(uri, sweep.tracking.patience_s, partial(at.stops.outage, at.stops.tracking_lost, "MLflow"))
    )
    if run.storage.remote:
        stack.enter_context(stopping.store_watched(sweep, run, at.stops))
    experiment = sweep.tracking.experiment or sweep.name
    at.experiment_id = tracking.ensure_experiment(uri, experiment)
    if at.parent is None:
        at.parent = tracking.start_parent(
            uri,
            experiment_id=at.experiment_id,
            name=f"{sweep.name}-{at.run_dir.name}",
            params=_parent_params(sweep),
            tags={tracking.SWEEP_NAME_TAG: sweep.name} | tracking.provenance(),
        )
        link = tracking.artifact_link(at.experiment_id, at.parent, "report/index.html")
        tracking.describe_sweep(uri, at.parent, tracking.sweep_description(sweep, at.source, run.location, link))
    else:
        tracking.reopen(uri, at.parent)
    run.save(parent_run_id=at.parent, experiment_id=at.experiment_id, tracking_uri=uri, status="running")
    tracking.log_file(uri, at.parent, at.source)  # (again on --resume: the same files)
    tracking.log_dict(uri, at.parent, sweep.model_dump(mode="json", by_alias=True), "resolved_spec.json")
    echo(f"MLflow parent run {at.parent} in experiment '{experiment}'")


def _run_trials(at: _Open, dashboard: str | None, resume: bool) -> SweepResult:
    """Tune runs the trials (a transfer sweep's sources found first, what they share prepared)."""
    stopping.injected_interrupt("startup")
    at.echo(cluster.dashboard_hint(dashboard))
    at.sweep = _find_sources(at.sweep, at.run, _uri(at), at.echo)
    if at.prepared is not None:
        ray.get(at.prepared)
    tracked = tuner.Tracked(_uri(at), at.experiment_id, _parent(at))
    return tuner.fit(at.sweep, at.run, tracked, resume=resume, echo=at.echo, stops=at.stops)


def _summarize(at: _Open, result: SweepResult) -> None:
    """The summary and the verdicts (the best configuration against the others) into the parent run."""
    stopping.injected_interrupt("summary")
    uri, parent = _uri(at), _parent(at)
    log_summary(at.sweep, result, uri, parent)
    if not result.interrupted:
        children = tracking.child_runs(uri, at.experiment_id, parent)
        runs = {r.trial_id: r.run_id for r in children if r.trial_id is not None}
        result.comparison = verdicts.compare(at.sweep, result.rows, verdicts.mlflow_outcomes(uri, runs))
        verdicts.log(result.comparison, uri, parent, at.run_dir)


def _report(at: _Open, report: Callable[[str], None]) -> None:
    """The report, into the parent run too: a failure to draw loses no result, so it only warns."""
    try:
        report(_uri(at))
    except Exception as exc:  # noqa: BLE001 - the sweep's results are safe; say how to retry
        at.echo(f"warning: the report failed ({type(exc).__name__}: {exc}); `satune report {at.source}` draws it again")


def _finish(at: _Open, result: SweepResult) -> SweepResult:
    result.labels = at.run.state.get("source_labels", {})
    if result.interrupted:
        stopping.end_interrupted(at.run, at.echo)
    else:
        tracking.end_run(_uri(at), _parent(at), "FINISHED")
        at.run.save(status="finished")
    return result


def _find_sources(sweep: SweepSpec, run: RunDir, uri: str, echo) -> SweepSpec:
    """A grid axis `runs_of: <sweep>` becomes that sweep's finished trials (`mlflow:<run id>`), from
    the newest run of it in this tracking store; found once, and kept in sweep.json for --resume."""
    axes = {k: v for k, v in sweep.search.grid.items() if isinstance(v, RunsOf)}
    if not axes:
        return sweep
    if "sources" not in run.state:
        sources: dict[str, list[str]] = {}
        labels: dict[str, str] = {}
        for key, axis in axes.items():
            found = tracking.finished_trials(uri, axis.runs_of)
            if not found:
                raise SweepError(
                    f"search.grid.{key}: no finished trial of sweep '{axis.runs_of}' at {uri}; "
                    f"run `satune sweep` on it first, with this storage or tracking server"
                )
            sources[key] = [f"mlflow:{r.run_id}" for r in found]
            labels |= {f"mlflow:{r.run_id}": source_label(r.params) for r in found}
        run.save(sources=sources, source_labels=labels)
    echo(f"sources: {', '.join(f'{len(v)} trials of {axes[k].runs_of}' for k, v in run.state['sources'].items())}")
    data = sweep.model_dump(mode="json", by_alias=True, exclude_unset=True)  # as written: it is validated again
    data["search"]["grid"] |= run.state["sources"]
    return SweepSpec.model_validate(data)


def _check_data(sweep: SweepSpec, joined: bool, echo: Callable[[str], None]) -> None:
    """Data sets that are not on disk fail the sweep before Ray starts. Joined to a cluster, trials
    read them on their own nodes, which this machine cannot see: a warning then."""
    problems = missing_data(sweep.trial)
    if problems and not joined:
        raise SweepError("\n".join(problems))
    for line in problems:
        echo(f"warning: {line} on this machine (the trials read it on their nodes)")


def _prepare(sweep: SweepSpec, echo) -> ray.ObjectRef | None:
    """What every trial shares (SAT's difficulty ranking: one clean fit), started once on a Ray worker
    with one trial's resources as soon as Ray is up; the trials, which would all compute it at once,
    start when it is done. None: nothing to prepare."""
    what = sweep.trial.method.preparation()
    if what is None:
        return None
    echo(what)
    task = ray.remote(**cluster.ray_options(sweep.resources))(_prepare_on_worker)
    threads = sweep.trial.runtime.threads or max(1, int(sweep.resources.cpu))
    return task.remote(sweep.trial.model_dump(mode="json", by_alias=True, exclude_unset=True), threads)


def _prepare_on_worker(trial: dict, threads: int) -> None:
    from satune.specs import TrialSpec, set_path
    from satune.trial import prepare as prepare_trial

    prepare_trial(TrialSpec.model_validate(set_path(trial, "runtime.threads", threads)))


def _parent_params(sweep: SweepSpec) -> dict:
    s = sweep.search
    return {
        "search.algorithm": s.algorithm,
        "search.metric": ",".join(s.metrics),
        "search.mode": ",".join(s.modes),
        "search.num_samples": s.samples,
        "search.space": {k: {d.kind: d.value} for k, d in s.space.items()},
        "search.grid": s.grid,
        "search.repeats": s.repeats,
        "scheduler.kind": sweep.scheduler.kind,
        "seed": sweep.seed,
        "resources.cpu": sweep.resources.cpu,
        "resources.gpu": sweep.resources.gpu,
        "resources.max_concurrent": sweep.resources.max_concurrent,
    }
