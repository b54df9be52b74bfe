"""`satune sweep`: Ray Tune runs the trials, Optuna proposes them, MLflow records them. This module
orchestrates; its pure parts live beside it (rundir, plan, summary, progress, space).

One sweep run lives in `storage/<name>/<timestamp>/`: the sweep file and resolved spec
(`sweep.json`, which also names the MLflow parent run), the Optuna journal, and Tune's experiment
(`tune/`). The local MLflow store (`storage/mlflow/`) is shared by every sweep in `storage`, so
`satune ui` compares them all. `--resume` continues the newest unfinished run of the sweep.
With storage at an object store's URL, Tune writes there directly and satune copies its own
files up as they change (satune.sweep.store).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import warnings
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from satune import tracking
from satune.seeds import derive_seed
from satune.specs import RunsOf, SweepSpec
from satune.specs.datafiles import missing_data
from satune.sweep import stopping, verdicts
from satune.sweep.journal import fail_running
from satune.sweep.rundir import JOURNAL_FILE, RunDir, SweepError, prepare, writable_by_others
from satune.sweep.stopping import SweepInterrupted
from satune.sweep.summary import SweepResult, TrialRow, best_configuration, log_summary, source_label
from satune.tune import cluster, final_stage
from satune.tune.progress import Progress, echo_stderr, live_view
from satune.tune.search import Cells, Replicates
from satune.tune.space import cell_label, grid_space, optuna_space, sampler
from satune.tune.trainable import TrialContext, resolve_trial, trial_trainable
from satune.tune.upstream import FinalResultOptunaSearch, result_trials

# --------------------------------------------------------------------------------------------
# The sweep


@dataclass
class _Open:
    """What the phases of a sweep hand on: its run directory, and once tracking is open, where."""

    sweep: SweepSpec
    source: Path
    run: RunDir
    echo: Callable[[str], None]
    lost: threading.Event = field(default_factory=threading.Event)  # the tracking server is gone for good
    store_lost: threading.Event = field(default_factory=threading.Event)  # ... the object store
    uri: str | None = None
    experiment_id: str = ""
    parent: str | None = None

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
    at = _Open(sweep, source, prepare(sweep, source, resume), echo or echo_stderr)  # prepare writes nothing
    at.uri, at.parent = sweep.tracking.uri, at.run.state.get("parent_run_id")
    with stopping.sigterm_as_sigint(), ExitStack() as stack:
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
        except KeyboardInterrupt:
            stopping.end_interrupted(at.run, at.echo, tracked=not at.lost.is_set())
            raise SweepInterrupted(at.run.path) from None
        except BaseException:
            if at.run.path is not None:
                at.run.save(status="failed")
            if at.parent is not None and at.uri is not None and not at.lost.is_set():
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
    Ray does (each takes seconds). Ends with Ray up and the run directory claimed."""
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
    stopping.sigterm_to_sigint()  # again: ray.init replaced it
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
        tracking.watched(uri, sweep.tracking.patience_s, partial(stopping.stop_for_outage, at.lost, echo, "MLflow"))
    )
    if run.storage.remote:
        stack.enter_context(stopping.store_watched(sweep, run, at.store_lost, echo))
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
    """Tune runs the trials (a transfer sweep's sources found first, rankings prepared once)."""
    stopping.injected_interrupt("startup")
    at.echo(cluster.dashboard_hint(dashboard))
    at.sweep = _find_sources(at.sweep, at.run, _uri(at), at.echo)
    _prepare(at.sweep, at.echo)
    result = _fit(
        at.sweep,
        at.run,
        uri=_uri(at),
        experiment_id=at.experiment_id,
        parent=_parent(at),
        resume=resume,
        echo=at.echo,
        store_lost=at.store_lost,
    )
    if at.lost.is_set():  # nothing more can reach MLflow: end as interrupted, without the summary
        raise KeyboardInterrupt
    return result


def _summarize(at: _Open, result: SweepResult) -> None:
    """The summary and the verdicts (the best configuration against the others) into the parent run."""
    stopping.injected_interrupt("summary")
    uri, parent = _uri(at), _parent(at)
    log_summary(at.sweep, result, uri, parent)
    if not result.interrupted:
        runs = {
            r.data.tags.get(tracking.TRIAL_TAG): r.info.run_id
            for r in tracking.child_runs(uri, at.experiment_id, parent)
        }
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
            sources[key] = [f"mlflow:{r.info.run_id}" for r in found]
            labels |= {f"mlflow:{r.info.run_id}": source_label(r.data.params) for r in found}
        run.save(sources=sources, source_labels=labels)
    echo(f"sources: {', '.join(f'{len(v)} trials of {axes[k].runs_of}' for k, v in run.state['sources'].items())}")
    data = sweep.model_dump(mode="json", by_alias=True, exclude_unset=True)  # as written: it is validated again
    data["search"]["grid"] |= run.state["sources"]
    return SweepSpec.model_validate(data)


class _TuneQuiet(logging.Filter):
    """Drops what Tune logs that satune says better: its hint to resume with Tuner.restore (satune
    prints its `--resume` line), and, once the sweep stopped waiting for the object store, a
    traceback for each of Tune's last saves that therefore failed (satune said why, in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Experiment has been interrupted"):
            return False
        return not (record.exc_info and _gave_up(record.exc_info[1]))


def _gave_up(exc: BaseException | None) -> bool:
    from satune.sweep.patient_s3 import GaveUp

    while exc is not None:
        if isinstance(exc, GaveUp):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


_TUNE_LOGGERS = ("ray.tune.tune", "ray.tune.execution.experiment_state", "ray.train._internal.storage")


@contextmanager
def _tune_quieted():
    quiet = _TuneQuiet()
    for name in _TUNE_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        yield
    finally:
        for name in _TUNE_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)


def _check_data(sweep: SweepSpec, joined: bool, echo: Callable[[str], None]) -> None:
    """Data sets that are not on disk fail the sweep before Ray starts. Joined to a cluster, trials
    read them on their own nodes, which this machine cannot see: a warning then."""
    problems = missing_data(sweep.trial)
    if problems and not joined:
        raise SweepError("\n".join(problems))
    for line in problems:
        echo(f"warning: {line} on this machine (the trials read it on their nodes)")


def _prepare(sweep: SweepSpec, echo) -> None:
    """What every trial shares (SAT's difficulty ranking: one clean fit), computed once on a Ray
    worker with one trial's resources before the trials start, which would all compute it at once."""
    what = sweep.trial.method.preparation()
    if what is None:
        return
    echo(what)
    task = ray.remote(**cluster.ray_options(sweep.resources))(_prepare_on_worker)
    threads = sweep.trial.runtime.threads or max(1, int(sweep.resources.cpu))
    ray.get(task.remote(sweep.trial.model_dump(mode="json", by_alias=True, exclude_unset=True), threads))


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


def _fit(
    sweep: SweepSpec,
    run: RunDir,
    *,
    uri: str,
    experiment_id: str,
    parent: str,
    resume: bool,
    echo: Callable[[str], None],
    store_lost: threading.Event,
) -> SweepResult:
    # The searched metrics arrive with the final evaluation, after the per-epoch reports that
    # carry the select-slice proxy; specs.py already checked that every metric is reported.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # fresh experiment state if the driver dies
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # satune prints its own progress (verbose=0 below)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    threads = max(1, int(sweep.resources.cpu))
    fail_at = os.environ.get("SATUNE_FAIL_AT_EPOCH")
    ctx = TrialContext(
        base=sweep.trial.model_dump(mode="json", exclude_unset=True, by_alias=True),
        sweep_seed=sweep.seed,
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        threads=threads,
        seeds=sweep.search.seeds,
        fail_at_epoch=int(fail_at) if fail_at else None,
    )
    trainable = trial_trainable(ctx, sweep, cluster.trial_resources(sweep.resources))
    run_dir = run.path
    assert run_dir is not None
    progress = Progress(sweep, run_dir)
    # Trials' requests to an object store wait out an outage a minute longer than the sweep does:
    # the sweep stops them (resumably) before the outage fails them (spending their retries).
    storage_path, fs = run.storage.tune_storage(sweep.name, run_dir, patience=sweep.storage_patience_s + 60)
    # Tune stages its state on this node under <Ray session>/artifacts/<second>/<experiment name>: two
    # sweeps on one cluster that start in the same second with one name share that folder, and each
    # reads the other's trials as its own. So each run names its own, kept for --resume (a run that
    # an older satune started keeps its "tune").
    tune_name = run.state.get("tune_name")
    if tune_name is None:
        older = resume and tune.Tuner.can_restore(f"{storage_path}/tune", storage_filesystem=fs)
        tune_name = "tune" if older else f"tune-{secrets.token_hex(4)}"
    if run.state.get("tune_name") != tune_name:
        run.save(tune_name=tune_name)
    tune_dir = f"{storage_path}/{tune_name}"
    callbacks: list[tune.Callback] = [progress]
    sync = tune.SyncConfig()
    if fs is not None:  # an object store: our files go up whenever Tune saves its state, which goes up too
        callbacks.append(_Synced(run))
        # sync_timeout: how long Tune's loop may wait on an upload of its state (the default, 30
        # min, would hold a sweep stopped during an outage as long as its requests wait)
        sync = tune.SyncConfig(sync_period=int(float(os.environ["TUNE_GLOBAL_CHECKPOINT_S"])), sync_timeout=30)
    if resume and tune.Tuner.can_restore(tune_dir, storage_filesystem=fs):
        echo(f"resuming {run_dir}" if fs is None else f"resuming {run_dir} (Tune's state: {tune_dir})")
        tuner = tune.Tuner.restore(
            tune_dir, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=grid_space(sweep.search) if _is_grid(sweep) else {},
            tune_config=_tune_config(sweep, run_dir),
            run_config=tune.RunConfig(
                name=tune_name,
                storage_path=storage_path,
                storage_filesystem=fs,
                sync_config=sync,
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=callbacks,
                verbose=0,
            ),
        )
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with live_view(), _tune_quieted():  # a live table on a terminal (else lines)
            grid = tuner.fit()  # Ctrl-C: Tune saves its state, stops the trials and returns
    except Exception:
        if store_lost.is_set():  # Tune's last look at its state, in the store, found it away
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, sigint)  # Tune leaves its own handler behind, even after a normal end
    if store_lost.is_set():  # Tune's saved state is out of reach: --resume reads it once the store is back
        raise KeyboardInterrupt
    # After an interrupt Tune marks the trials it stopped TERMINATED in memory, like finished ones;
    # the state it saved just before (what --resume restores) still has them RUNNING.
    saved = {t.trial_id: t.status for t in tune.ExperimentAnalysis(tune_dir, storage_filesystem=fs).trials}
    rows = [_row(ctx, t, saved.get(t.trial_id)) for t in result_trials(grid)]
    interrupted = len(rows) < sweep.search.trial_count or not all(r.finished for r in rows)
    if not interrupted:
        _settle_orphans(run_dir, uri, experiment_id, parent, {r.trial_id for r in rows})
    best, front = best_configuration(sweep, rows)
    return SweepResult(run_dir, rows, best, front, interrupted)


def _max_epochs(sweep: SweepSpec) -> int:
    """The longest trial's epochs: the base trial's, or the top of a searched train.epochs."""
    dom = sweep.search.space.get("train.epochs")
    return max(dom.value) if dom is not None else sweep.trial.train.epochs


def _is_grid(sweep: SweepSpec) -> bool:
    """A grid, or nothing to search (cells and repeats of the base trial): Tune's grid, no Optuna."""
    return sweep.search.algorithm == "grid" or not sweep.search.space


def _tune_config(sweep: SweepSpec, run_dir: Path) -> tune.TuneConfig:
    s = sweep.search
    search_alg: Searcher | None = None
    num_samples = s.trial_count
    if not _is_grid(sweep):
        metric = s.metrics if len(s.metrics) > 1 else s.metrics[0]
        mode = s.modes if len(s.modes) > 1 else s.modes[0]
        storage = JournalStorage(JournalFileBackend(str(run_dir / JOURNAL_FILE)))
        cells = s.cells()

        def study(i: int) -> OptunaSearch:  # one Optuna study per grid cell, in one journal
            name = sweep.name if len(cells) == 1 else f"{sweep.name}/{cell_label(cells[i])}"
            seed = sweep.seed if i == 0 else derive_seed(sweep.seed, "cell", i) % 2**32
            search = FinalResultOptunaSearch(
                space=optuna_space(s),
                metric=metric,
                mode=mode,
                sampler=sampler(s, seed),
                study_name=name,
                storage=storage,
            )
            # optuna-dashboard then names the objectives after the metrics, not "Objective 0"
            with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
                optuna.load_study(study_name=name, storage=storage).set_metric_names(s.metrics)
            return search

        search_alg = (
            study(0)
            if len(cells) == 1
            else Cells(cells, [study(i) for i in range(len(cells))], s.samples, metric, mode)
        )
        if s.repeats > 1:
            search_alg = Replicates(search_alg, s.repeats, s.metrics)
    else:
        num_samples = 1  # the grid already holds every configuration and repeat
    scheduler = None
    if sweep.scheduler.kind == "asha":
        sch = sweep.scheduler
        # stop_last_trials=False: a trial that reaches the last epoch still reports its final evaluation.
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=sch.metric,
            mode=sch.mode,
            max_t=_max_epochs(sweep),
            grace_period=sch.grace_period,
            reduction_factor=sch.reduction_factor,
            stop_last_trials=False,
        )
    return tune.TuneConfig(
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=sweep.resources.max_concurrent,
        trial_dirname_creator=lambda t: t.trial_id,
        reuse_actors=sweep.resources.reuse_actors,
    )


class _Synced(tune.Callback):
    """Copies the run's own files (state, Optuna journal) to storage at a URL each time Tune saves
    its state (it asks its callbacks for theirs then), before that state is uploaded."""

    def __init__(self, run: RunDir):
        self.run = run

    def get_state(self) -> dict | None:
        self.run.sync()
        return None


def _settle_orphans(run_dir: Path, uri: str, experiment_id: str, parent: str, trial_ids: set[str]) -> None:
    """Once Tune is done with every trial: a trial the driver started but died before Tune
    recorded (Tune saves its state every few seconds) was asked for again on --resume, as a new
    trial. Its Optuna trial, still RUNNING, is marked FAIL so that Optuna's history matches Tune's;
    its MLflow run is deleted (MLflow keeps deleted runs, restorable) so that every trial Tune ran
    has exactly one run, and nothing else."""
    journal = run_dir / JOURNAL_FILE
    if journal.exists():
        fail_running(journal)
    for run in tracking.child_runs(uri, experiment_id, parent):
        if run.data.tags.get(tracking.TRIAL_TAG) not in trial_ids:
            tracking.discard_orphan(uri, run.info.run_id)


def _row(ctx: TrialContext, trial, saved_status: str | None) -> TrialRow:
    last = trial.last_result or {}
    metrics = {k: v for k, v in last.items() if "/" in k and isinstance(v, (int, float))}
    config = dict(trial.config or {})
    seed = resolve_trial(ctx, config).seed if config else None
    finished = saved_status in ("TERMINATED", "ERROR")  # ran to its end, stopped by the scheduler, or failed
    return TrialRow(trial.trial_id, trial.status, config, metrics, seed, finished)
