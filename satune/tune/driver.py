"""`satune sweep`: Ray Tune runs the trials, Optuna proposes them, MLflow records them.

One sweep run lives in `storage/<name>/<timestamp>/`: the sweep file and resolved spec
(`sweep.json`, which also names the MLflow parent run), the Optuna journal, and Tune's experiment
(`tune/`). The local MLflow store (`storage/mlflow/`) is shared by every sweep in `storage`, so
`satune ui` compares them all. `--resume` continues the newest unfinished run of the sweep.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from satune import tracking
from satune.specs import SatSpec, SweepSpec
from satune.tune import cluster
from satune.tune.space import REPEAT_KEY, grid_space, optuna_space, sampler
from satune.tune.trainable import TrialContext, resolve_trial, run

STATE_FILE = "sweep.json"
JOURNAL_FILE = "optuna.journal"
# What may change between a sweep and its --resume: how it runs, not what it computes.
RESUMABLE_CHANGES = {"resources", "max_failures"}


class SweepError(Exception):
    """The sweep cannot start or resume as asked; a one-line message for the user."""


@dataclass
class TrialRow:
    trial_id: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, float]
    seed: int | None = None


@dataclass
class SweepResult:
    directory: Path
    rows: list[TrialRow]
    best: TrialRow | None
    pareto: list[TrialRow] = field(default_factory=list)
    interrupted: bool = False


# --------------------------------------------------------------------------------------------
# Where a sweep lives


def sweep_root(sweep: SweepSpec) -> Path:
    return Path(sweep.storage) / sweep.name


def latest_run_dir(sweep: SweepSpec) -> Path | None:
    root = sweep_root(sweep)
    runs = sorted(p for p in root.glob("*") if (p / STATE_FILE).exists()) if root.exists() else []
    return runs[-1] if runs else None


def _comparable(sweep: SweepSpec) -> dict:
    data = sweep.model_dump(mode="json", by_alias=True)
    return {k: v for k, v in data.items() if k not in RESUMABLE_CHANGES}


def _changed_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def prepare(sweep: SweepSpec, source: Path, resume: bool) -> tuple[Path, dict]:
    """The run directory and its state: a new one (created by the first save_state), or the
    newest unfinished one for --resume."""
    if resume:
        run_dir = latest_run_dir(sweep)
        if run_dir is None:
            raise SweepError(f"--resume: no earlier run of sweep '{sweep.name}' in {sweep_root(sweep)}")
        state = json.loads((run_dir / STATE_FILE).read_text())
        if state["status"] == "finished":
            raise SweepError(f"--resume: the last run of '{sweep.name}' ({run_dir.name}) finished; nothing to resume")
        changed = _changed_keys(state["spec"], _comparable(sweep))
        if changed:
            raise SweepError(f"--resume: the sweep file changed in {', '.join(changed)} since {run_dir.name}; "
                             "only resources and max_failures may change (run without --resume to start anew)")  # fmt: skip
        return run_dir, state
    run_dir = sweep_root(sweep) / time.strftime("%Y%m%d-%H%M%S")
    while run_dir.exists():  # two sweeps started within a second
        run_dir = run_dir.with_name(run_dir.name + "-1")
    state = {"spec": _comparable(sweep), "file": source.read_text(), "status": "running"}
    return run_dir, state


def save_state(run_dir: Path, state: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(run_dir / STATE_FILE)


# --------------------------------------------------------------------------------------------
# The plan (--dry-run) and the summary


def plan_lines(sweep: SweepSpec) -> list[str]:
    s, r, t = sweep.search, sweep.resources, sweep.trial
    objective = ", ".join(f"{m} ({mode})" for m, mode in zip(s.metrics, s.modes, strict=True))
    lines = [
        f"sweep {sweep.name}: {s.trial_count} trials of {t.method.kind} on {t.data.dataset}, "
        f"{t.train.epochs} epochs each, {s.algorithm} search for {objective}",
        f"resources: {r.cpu:g} cpu, {r.gpu:g} gpu per trial, at most {r.max_concurrent} at once, "
        f"{sweep.max_failures} retries from the last checkpoint",
        f"scheduler: {sweep.scheduler.kind}"
        + (f" on {sweep.scheduler.metric}" if sweep.scheduler.kind != "none" else ""),
        f"tracking: {sweep.tracking.uri or 'a local MLflow server on SQLite'}, experiment "
        f"'{sweep.tracking.experiment or sweep.name}'; storage {sweep.storage}",
    ]
    for key, dom in s.space.items():
        lines.append(f"  search {key}: {dom.kind} {dom.value}")
    return lines


def reproduce_command(source: Path, row: TrialRow, threads: int | None) -> str:
    parts = [f"satune run {source}"]
    for key, value in sorted(row.config.items()):
        if key != REPEAT_KEY:
            parts.append(f"--set {key}={json.dumps(value)}")
    parts.append(f"--set seed={row.seed}")
    if threads is not None:
        parts.append(f"--set runtime.threads={threads}")
    return " ".join(parts)


def pareto_front(rows: list[TrialRow], metrics: list[str], modes: list[str]) -> list[TrialRow]:
    """Rows no other row dominates (at least as good in every objective, better in one)."""

    def score(r: TrialRow) -> list[float]:
        return [r.metrics[m] if mode == "max" else -r.metrics[m] for m, mode in zip(metrics, modes, strict=True)]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    scores = [score(r) for r in rows]
    return [r for r, s in zip(rows, scores, strict=True) if not any(dominates(o, s) for o in scores)]


def best_of(rows: list[TrialRow], metrics: list[str], modes: list[str]) -> tuple[TrialRow | None, list[TrialRow]]:
    scored = [r for r in rows if all(m in r.metrics for m in metrics)]
    if not scored:
        return None, []
    front = pareto_front(scored, metrics, modes) if len(metrics) > 1 else scored
    sign = 1 if modes[0] == "max" else -1
    best = max(front, key=lambda r: sign * r.metrics[metrics[0]])
    return best, front if len(metrics) > 1 else []


# --------------------------------------------------------------------------------------------
# The sweep


def run_sweep(
    sweep: SweepSpec,
    source: Path,
    *,
    resume: bool = False,
    address: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> SweepResult:
    echo = echo or echo_stderr
    run_dir, state = prepare(sweep, source, resume)  # checks --resume; writes nothing yet
    experiment = sweep.tracking.experiment or sweep.name
    with ExitStack() as stack:
        # 1. MLflow: reach it (or start it) before anything computes or is written.
        if sweep.tracking.uri is None:
            server = stack.enter_context(tracking.LocalServer(Path(sweep.storage)))
            uri = server.uri
            echo(f"MLflow: local server {uri} (store {server.db.parent}); `satune ui {source}` serves it later")
        else:
            uri = sweep.tracking.uri
            tracking.check_reachable(uri)
            echo(f"MLflow: {uri}")
        experiment_id = tracking.ensure_experiment(uri, experiment)
        if resume:
            parent = state["parent_run_id"]
            tracking.reopen(uri, parent)
        else:
            parent = tracking.start_parent(uri, experiment_id, f"{sweep.name}-{run_dir.name}",
                                           _parent_params(sweep), tracking.provenance())  # fmt: skip
            tracking.log_file(uri, parent, source)
            tracking.log_dict(uri, parent, sweep.model_dump(mode="json", by_alias=True), "resolved_spec.json")
        state |= {"parent_run_id": parent, "experiment_id": experiment_id, "tracking_uri": uri, "status": "running"}
        save_state(run_dir, state)
        echo(f"MLflow parent run {parent} in experiment '{experiment}'")

        # 2. Ray: a private instance or the given cluster; stop at once if no node fits a trial.
        try:
            dashboard = cluster.start(address)
            stack.callback(cluster.stop)
            echo(cluster.dashboard_hint(dashboard))
            cluster.check_feasible(sweep.resources.cpu, sweep.resources.gpu)
            _prepare_ranking(sweep, echo)
            result = _fit(sweep, run_dir, uri, experiment_id, parent, resume, echo)
        except BaseException:
            tracking.end_run(uri, parent, "FAILED")
            state["status"] = "failed"
            save_state(run_dir, state)
            raise

        # 3. The summary goes into the parent run.
        _summarize(sweep, result, uri, parent)
        status = "KILLED" if result.interrupted else "FINISHED"
        tracking.end_run(uri, parent, status)
        state["status"] = "interrupted" if result.interrupted else "finished"
        save_state(run_dir, state)
        return result


def _prepare_ranking(sweep: SweepSpec, echo) -> None:
    """SAT's difficulty ranking is one clean fit shared by every trial: compute it once, on a Ray
    worker with one trial's resources, before the trials start (they would all compute it at once)."""
    method = sweep.trial.method
    if not isinstance(method, SatSpec) or method.ranking == "random" or method.classes is not None:
        return
    echo("SAT ranking: one clean fit for the difficulty scores (cached for every trial)")
    task = ray.remote(num_cpus=sweep.resources.cpu, num_gpus=sweep.resources.gpu)(_warm_ranking)
    ray.get(task.remote(sweep.trial.model_dump(mode="json", by_alias=True), max(1, int(sweep.resources.cpu))))


def _warm_ranking(trial: dict, threads: int) -> None:
    import torch

    from satune import runtime
    from satune.data import load_data
    from satune.ranking import difficulty_scores
    from satune.specs import TrialSpec

    spec = TrialSpec.model_validate(trial)
    torch.set_num_threads(threads)
    device = runtime.resolve_device(spec.runtime.device)
    cache = runtime.cache_dir(spec.runtime)
    difficulty_scores(spec, load_data(spec.data, cache, device), device, cache)


def _parent_params(sweep: SweepSpec) -> dict:
    s = sweep.search
    return {
        "search.algorithm": s.algorithm, "search.metric": ",".join(s.metrics), "search.mode": ",".join(s.modes),
        "search.num_samples": s.num_samples, "search.space": {k: {d.kind: d.value} for k, d in s.space.items()},
        "scheduler.kind": sweep.scheduler.kind, "seed": sweep.seed, "resources.cpu": sweep.resources.cpu,
        "resources.gpu": sweep.resources.gpu, "resources.max_concurrent": sweep.resources.max_concurrent,
    }  # fmt: skip


def _fit(sweep: SweepSpec, run_dir: Path, uri: str, experiment_id: str, parent: str, resume: bool, echo) -> SweepResult:
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
        sweep_seed=sweep.seed, tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
        threads=threads, seeds=sweep.search.seeds, fail_at_epoch=int(fail_at) if fail_at else None,
    )  # fmt: skip
    trainable = tune.with_resources(partial(run, ctx=ctx), {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu})
    progress = Progress(sweep, run_dir)
    tune_dir = run_dir / "tune"
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        echo(f"resuming {run_dir}")
        tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=grid_space(sweep.search) if _is_grid(sweep) else {},
            tune_config=_tune_config(sweep, run_dir),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(run_dir),
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[progress],
                verbose=0,
            ),
        )
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        grid = tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    _fail_orphans(run_dir, sweep)
    rows = [_row(ctx, t) for t in grid._experiment_analysis.trials]
    done = sum(1 for r in rows if r.status in ("TERMINATED", "ERROR"))
    interrupted = done < sweep.search.trial_count
    best, front = best_of([r for r in rows if r.status == "TERMINATED"], sweep.search.metrics, sweep.search.modes)
    return SweepResult(run_dir, rows, best, front, interrupted)


def _max_epochs(sweep: SweepSpec) -> int:
    """The longest trial's epochs: the base trial's, or the top of a searched train.epochs."""
    dom = sweep.search.space.get("train.epochs")
    return max(dom.value) if dom is not None else sweep.trial.train.epochs


def _is_grid(sweep: SweepSpec) -> bool:
    """A grid, or nothing to search (repeats of the base trial): Tune's grid, without Optuna."""
    return sweep.search.algorithm == "grid" or not sweep.search.space


def _tune_config(sweep: SweepSpec, run_dir: Path) -> tune.TuneConfig:
    s = sweep.search
    search_alg, num_samples = None, s.num_samples
    if not _is_grid(sweep):
        search_alg = _FinalResultOptunaSearch(
            space=optuna_space(s),
            metric=s.metrics if len(s.metrics) > 1 else s.metrics[0],
            mode=s.modes if len(s.modes) > 1 else s.modes[0],
            sampler=sampler(s, sweep.seed),
            study_name=sweep.name,
            storage=JournalStorage(JournalFileBackend(str(run_dir / JOURNAL_FILE))),
        )
    else:
        num_samples = 1  # the grid already holds every repeat
    scheduler = None
    if sweep.scheduler.kind == "asha":
        sch = sweep.scheduler
        # stop_last_trials=False: a trial that reaches the last epoch still reports its final evaluation.
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=sch.metric, mode=sch.mode,
                                  max_t=_max_epochs(sweep), grace_period=sch.grace_period,
                                  reduction_factor=sch.reduction_factor, stop_last_trials=False)  # fmt: skip
    return tune.TuneConfig(
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=sweep.resources.max_concurrent,
        trial_dirname_creator=lambda t: t.trial_id,
        reuse_actors=False,
    )


class _FinalResultOptunaSearch(OptunaSearch):
    """OptunaSearch told only of final results.

    Per-epoch reports carry the select-slice proxy, not the searched metrics, and no Optuna pruner
    runs under Tune (ASHA does the stopping), so intermediate values are not sent. It also keeps a
    resumed sweep from reporting into an Optuna trial that finished just before the driver died.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass


def _fail_orphans(run_dir: Path, sweep: SweepSpec) -> None:
    """Once Tune is done with every trial, an Optuna trial still RUNNING was asked for by a driver
    that died before Tune recorded it: mark it FAIL so that Optuna's history matches Tune's."""
    journal = run_dir / JOURNAL_FILE
    if not journal.exists():
        return
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=sweep.name, storage=storage)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def _row(ctx: TrialContext, trial) -> TrialRow:
    last = trial.last_result or {}
    metrics = {k: v for k, v in last.items() if "/" in k and isinstance(v, (int, float))}
    config = dict(trial.config or {})
    seed = resolve_trial(ctx, config).seed if config else None
    return TrialRow(trial.trial_id, trial.status, config, metrics, seed)


def _summarize(sweep: SweepSpec, result: SweepResult, uri: str, parent: str) -> None:
    rows = [{"trial_id": r.trial_id, "status": r.status, "seed": r.seed, **r.config, **r.metrics} for r in result.rows]
    tracking.log_dict(uri, parent, rows, "trials.json")
    tags = {"satune.trials": len(result.rows), "satune.errors": sum(r.status == "ERROR" for r in result.rows)}
    if result.best is not None:
        tags["satune.best_trial"] = result.best.trial_id
        tracking.log_metrics(uri, parent, {f"best/{m}": result.best.metrics[m] for m in sweep.search.metrics})
    tracking.set_tags(uri, parent, tags)


class Progress(tune.Callback):
    """Readable progress on the driver, and a safety net for the trials' MLflow run status.

    Tune pickles callbacks with the experiment and a resumed sweep gets the pickled copy back, so
    the live tracking details (a local server's port changes) are read from sweep.json when needed.
    """

    def __init__(self, sweep: SweepSpec, run_dir: Path):
        self.sweep, self.run_dir, self.echo = sweep, run_dir, echo_stderr
        self.total = sweep.search.trial_count
        self.done: set[str] = set()
        self.best: tuple[float, str] | None = None

    def _status(self) -> str:
        return f"[{len(self.done)}/{self.total} done]"

    def on_trial_start(self, iteration, trials, trial, **info):
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.config.items())
        self.echo(f"{self._status()} trial {trial.trial_id} started: {params}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.sweep.search.metrics[0] in result:
            return  # the final report: on_trial_complete prints it
        proxy = self.sweep.trial.eval.select_metric
        self.echo(f"{self._status()} trial {trial.trial_id} epoch {result.get('epoch', 0) + 1}/"
                  f"{self.sweep.trial.train.epochs}: {proxy}={_fmt(result.get(proxy))} "
                  f"train/loss={_fmt(result.get('train/loss'))}")  # fmt: skip

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done.add(trial.trial_id)
        metric, mode = self.sweep.search.metrics[0], self.sweep.search.modes[0]
        value = (trial.last_result or {}).get(metric)
        if value is not None and (self.best is None or (value if mode == "max" else -value) > self.best[0]):
            self.best = (value if mode == "max" else -value, trial.trial_id)
        what = "stopped early by the scheduler" if value is None else f"done: {metric}={_fmt(value)}"
        best = f" (best so far: {self.best[1]})" if self.best else ""
        self.echo(f"{self._status()} trial {trial.trial_id} {what}{best}")
        self._close_run(trial.trial_id, "FINISHED", stopped=value is None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done.add(trial.trial_id)
        self.echo(f"{self._status()} trial {trial.trial_id} failed for good; traceback in {trial.error_file}")
        self._close_run(trial.trial_id, "FAILED", stopped=False)

    def _close_run(self, trial_id: str, status: str, stopped: bool) -> None:
        state = json.loads((self.run_dir / STATE_FILE).read_text())
        uri, parent = state["tracking_uri"], state["parent_run_id"]
        for r in tracking.child_runs(uri, state["experiment_id"], parent):
            if r.data.tags.get(tracking.TRIAL_TAG) != trial_id or r.info.status == status:
                continue
            if stopped:  # a scheduler stops a trial between reports: its run never ended itself
                tracking.set_tags(uri, r.info.run_id, {"satune.stopped_early": "true"})
            if stopped or r.info.status == "RUNNING":
                tracking.end_run(uri, r.info.run_id, status)


def echo_stderr(line: str) -> None:
    """Progress lines (module-level: Tune pickles the callback that holds it, by reference)."""
    print(line, file=sys.stderr, flush=True)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
