"""Progress lines on the driver while Tune runs, and a safety net for the trials' MLflow runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ray import tune

from satune import tracking
from satune.specs import SweepSpec
from satune.tune.rundir import STATE_FILE


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
        selected = f"{proxy}={_fmt(result[proxy])} " if proxy in result else ""  # (not every epoch: select_every)
        self.echo(f"{self._status()} trial {trial.trial_id} epoch {result.get('epoch', 0) + 1}/"
                  f"{self.sweep.trial.train.epochs}: {selected}train/loss={_fmt(result.get('train/loss'))}")  # fmt: skip

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
