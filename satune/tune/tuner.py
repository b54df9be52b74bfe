"""Tune's run of a sweep's trials: the Tuner built (or restored for --resume) with Optuna's studies,
the scheduler and the callbacks, run, and its trials read back as satune's rows."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from satune import tracking
from satune.seeds import derive_seed
from satune.specs import SweepSpec
from satune.sweep import trial_runs
from satune.sweep.journal import fail_running
from satune.sweep.rundir import JOURNAL_FILE, RunDir
from satune.sweep.stopping import Stops
from satune.sweep.summary import SweepResult, TrialRow, best_configuration
from satune.tune import cluster
from satune.tune.progress import Progress, live_view
from satune.tune.pruning import PruneFinished, prune
from satune.tune.search import Cells, Replicates
from satune.tune.space import cell_label, grid_space, optuna_space, sampler
from satune.tune.trainable import TrialContext, resolve_trial, trial_trainable
from satune.tune.upstream import FinalResultOptunaSearch, result_trials


@dataclass(frozen=True)
class Tracked:
    """Where the trials log: the tracking server, the sweep's experiment and parent run."""

    uri: str
    experiment_id: str
    parent: str


def fit(
    sweep: SweepSpec, run: RunDir, tracked: Tracked, *, resume: bool, echo: Callable[[str], None], stops: Stops
) -> SweepResult:
    """Tune runs the trials; Ctrl-C (or an outage, through the same signal) makes Tune save its state
    and stop them, and `Stop` is raised once Tune has returned."""
    _tune_environment()
    ctx = _trial_context(sweep, tracked)
    run_dir = run.path
    assert run_dir is not None  # (claimed in the preflight)
    tuner, tune_dir, fs = _tuner(sweep, run, ctx, resume, echo)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with live_view(), _tune_quieted():  # a live table on a terminal (else lines)
            grid = tuner.fit()  # Ctrl-C: Tune saves its state, stops the trials and returns
    except Exception:
        if stops.store_lost.is_set():  # Tune's last look at its state, in the store, found it away
            stops.raise_for_outage()
        raise
    finally:
        signal.signal(signal.SIGINT, sigint)  # Tune leaves its own handler behind, even after a normal end
    # An outage: Tune's saved state (in the store) or the trials' runs (in MLflow) are out of reach;
    # --resume reads them once they are back.
    stops.raise_for_outage()
    # After an interrupt Tune marks the trials it stopped TERMINATED in memory, like finished ones;
    # the state it saved just before (what --resume restores) still has them RUNNING.
    saved = {t.trial_id: t.status for t in tune.ExperimentAnalysis(tune_dir, storage_filesystem=fs).trials}
    runs = tracking.child_runs(tracked.uri, tracked.experiment_id, tracked.parent)
    logged = {r.trial_id: r for r in runs}
    trials = result_trials(grid)
    rows = [_row(ctx, t, saved.get(t.trial_id), logged.get(t.trial_id)) for t in trials]
    interrupted = len(rows) < sweep.search.trial_count or not all(r.finished for r in rows)
    if not interrupted:
        _settle_orphans(run_dir, tracked.uri, runs, {r.trial_id for r in rows})
        prune(t for t in trials if saved.get(t.trial_id) == t.status == "TERMINATED")  # (those not yet)
    best, front = best_configuration(sweep, rows)
    return SweepResult(run_dir, rows, best, front, interrupted)


def _tune_environment() -> None:
    # The searched metrics arrive with the final evaluation, after the per-epoch reports that
    # carry the select-slice proxy; specs.py already checked that every metric is reported.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # fresh experiment state if the driver dies
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # satune prints its own progress (verbose=0 below)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trial_context(sweep: SweepSpec, tracked: Tracked) -> TrialContext:
    fail_at = os.environ.get("SATUNE_FAIL_AT_EPOCH")
    return TrialContext(
        base=sweep.trial.model_dump(mode="json", exclude_unset=True, by_alias=True),
        sweep_seed=sweep.seed,
        tracking_uri=tracked.uri,
        experiment_id=tracked.experiment_id,
        parent_run_id=tracked.parent,
        threads=max(1, int(sweep.resources.cpu)),
        seeds=sweep.search.seeds,
        fail_at_epoch=int(fail_at) if fail_at else None,
    )


def _tuner(sweep: SweepSpec, run: RunDir, ctx: TrialContext, resume: bool, echo: Callable[[str], None]):
    """A new Tuner, or Tune's saved one restored for --resume; with Tune's experiment folder and
    filesystem (None: a local folder)."""
    run_dir = run.path
    assert run_dir is not None
    trainable = trial_trainable(ctx, sweep, cluster.trial_resources(sweep.resources))
    # Trials' requests to an object store wait out an outage a minute longer than the sweep does:
    # the sweep stops them (resumably) before the outage fails them (spending their retries).
    storage_path, fs = run.storage.tune_storage(sweep.name, run_dir, patience=sweep.storage_patience_s + 60)
    tune_name = _tune_name(run, storage_path, fs, resume)
    tune_dir = f"{storage_path}/{tune_name}"
    if resume and tune.Tuner.can_restore(tune_dir, storage_filesystem=fs):
        echo(f"resuming {run_dir}" if fs is None else f"resuming {run_dir} (Tune's state: {tune_dir})")
        tuner = tune.Tuner.restore(
            tune_dir, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
        return tuner, tune_dir, fs
    callbacks: list[tune.Callback] = [Progress(sweep, run_dir)]
    sync = tune.SyncConfig()
    if fs is None:  # (in an object store, Tune's state goes up in the background: pruned at the end)
        callbacks.append(PruneFinished())
    else:  # an object store: our files go up whenever Tune saves its state, which goes up too
        callbacks.append(_Synced(run))
        # sync_timeout: how long Tune's loop may wait on an upload of its state (the default, 30
        # min, would hold a sweep stopped during an outage as long as its requests wait)
        sync = tune.SyncConfig(sync_period=int(float(os.environ["TUNE_GLOBAL_CHECKPOINT_S"])), sync_timeout=30)
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
    return tuner, tune_dir, fs


def _tune_name(run: RunDir, storage_path: str, fs, resume: bool) -> str:
    """Tune stages its state on this node under <Ray session>/artifacts/<second>/<experiment name>: two
    sweeps on one cluster that start in the same second with one name share that folder, and each
    reads the other's trials as its own. So each run names its own, kept for --resume (a run that
    an older satune started keeps its "tune")."""
    tune_name = run.state.get("tune_name")
    if tune_name is None:
        older = resume and tune.Tuner.can_restore(f"{storage_path}/tune", storage_filesystem=fs)
        tune_name = "tune" if older else f"tune-{secrets.token_hex(4)}"
    if run.state.get("tune_name") != tune_name:
        run.save(tune_name=tune_name)
    return tune_name


class _TuneQuiet(logging.Filter):
    """Drops what Tune logs that satune says better: its hint to resume with Tuner.restore (satune
    prints its `--resume` line), and, once the sweep stopped waiting for the object store, a
    traceback for each of Tune's last saves that therefore failed (satune said why, in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Experiment has been interrupted"):
            return False
        if record.exc_info and _gave_up(record.exc_info[1]):
            return False
        # Tune's syncer reports a failed upload when it launches the next one, the traceback as text
        return "patient_s3.GaveUp" not in record.getMessage()


def _gave_up(exc: BaseException | None) -> bool:
    from satune.sweep.patient_s3 import GaveUp

    while exc is not None:
        if isinstance(exc, GaveUp):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


_TUNE_LOGGERS = (
    "ray.tune.tune",
    "ray.tune.execution.experiment_state",
    "ray.train._internal.storage",
    "ray.train._internal.syncer",
)


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


def _settle_orphans(run_dir: Path, uri: str, runs: list[tracking.RunRecord], trial_ids: set[str]) -> None:
    """Once Tune is done with every trial: a trial the driver started but died before Tune
    recorded (Tune saves its state every few seconds) was asked for again on --resume, as a new
    trial. Its Optuna trial, still RUNNING, is marked FAIL so that Optuna's history matches Tune's;
    its MLflow run is discarded, so that every trial Tune ran has exactly one run, and nothing else."""
    journal = run_dir / JOURNAL_FILE
    if journal.exists():
        fail_running(journal)
    trial_runs.discard_orphans(uri, runs, trial_ids)


def _row(ctx: TrialContext, trial, saved_status: str | None, logged: tracking.RunRecord | None) -> TrialRow:
    """A trial as Tune ran it; with its final report whole, from its MLflow run, once that holds it
    (Tune was told only what it reads: summary.tune_metrics)."""
    last = trial.last_result or {}
    metrics = {k: v for k, v in last.items() if "/" in k and isinstance(v, (int, float))}
    if logged is not None and tracking.INTEGRITY_TAG in logged.tags:
        metrics = logged.metrics | metrics
    config = dict(trial.config or {})
    seed = resolve_trial(ctx, config).seed if config else None
    finished = saved_status in ("TERMINATED", "ERROR")  # ran to its end, stopped by the scheduler, or failed
    return TrialRow(trial.trial_id, trial.status, config, metrics, seed, finished)
