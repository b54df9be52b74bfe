"""Progress on the driver while Tune runs: a live table on a terminal, plain lines elsewhere; and a
safety net for the trials' MLflow runs.

Tune pickles the `Progress` callback with the experiment and a resumed sweep gets that copy back,
so the callback holds no terminal and no counts of its own: the live display is state of the driver
process (`live_view`), and every line and frame is computed from Tune's trials, which a resume
restores with their statuses and results.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ray import tune
from ray.tune.experiment import Trial
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.logging import RichHandler
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from satune.specs import SweepSpec
from satune.sweep import trial_runs
from satune.sweep.rundir import STATE_FILE
from satune.sweep.shown import shown
from satune.sweep.summary import REPEAT_KEY, ranked

# Each state's style in the live table.
STATES = {
    "pending": "dim",
    "paused": "dim",
    "running": "cyan",
    "evaluating": "cyan",
    "done": "green",
    "stopped early": "yellow",
    "failed": "bold red",
}
FINISHED = ("done", "stopped early", "failed")
CHROME = 14  # lines kept for the live table's bar and header, and for the sweep's header lines above it


class Progress(tune.Callback):
    """Readable progress on the driver (the live table, or lines), and a safety net for the trials'
    MLflow run status.

    A resumed sweep gets the copy Tune pickled (see above), so the live tracking details (a local
    server's port changes) are read from sweep.json when needed.
    """

    def __init__(self, sweep: SweepSpec, run_dir: Path):
        self.sweep, self.run_dir, self.echo = sweep, run_dir, echo_stderr

    def on_step_end(self, iteration, trials, **info):
        if _view is not None:  # after each Tune event: statuses and results are up to date here
            _view.show(snapshot(self.sweep, trials, _view.started))

    def on_trial_start(self, iteration, trials, trial, **info):
        if _view is not None:
            _view.started[trial.trial_id] = time.time()
        params = ", ".join(f"{k}={shown(v, missing='None')}" for k, v in trial.config.items())
        self._line(f"{self._status(trials)} trial {trial.trial_id} started: {params}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.sweep.search.metrics[0] in result:
            return  # the final report: on_trial_complete prints it
        proxy = self.sweep.trial.eval.select_metric
        selected = (
            f"{proxy}={shown(result[proxy], missing='None')} " if proxy in result else ""
        )  # (not every epoch: select_every)
        if result.get("select/collapsed") == 1:
            selected += "(robust accuracy collapsed) "
        self._line(
            f"{self._status(trials)} trial {trial.trial_id} epoch {result.get('epoch', 0) + 1}/"
            f"{_epochs(self.sweep, trial)}: {selected}train/loss={shown(result.get('train/loss'), missing='None')}"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        metric = self.sweep.search.metrics[0]
        value = (trial.last_result or {}).get(metric)
        what = "stopped early by the scheduler" if value is None else f"done: {metric}={shown(value, missing='None')}"
        if (trial.last_result or {}).get("train/collapsed") == 1:
            what += " (its robust accuracy collapsed in training)"
        best = best_trial(self.sweep, trials)
        self._line(
            f"{self._status(trials, trial)} trial {trial.trial_id} {what}"
            + (f" (best so far: {best.trial_id})" if best is not None else "")
        )
        self._close_run(trial.trial_id, failed=False, stopped=value is None)

    def on_trial_error(self, iteration, trials, trial, **info):
        # Printed in both modes: above the live table it stays in the scrollback with its traceback's path.
        self.echo(f"{self._status(trials)} trial {trial.trial_id} failed for good; traceback in {trial.error_file}")
        self._close_run(trial.trial_id, failed=True, stopped=False)

    def _status(self, trials: Sequence[Trial], ending: Trial | None = None) -> str:
        """`[done/total done]`, counting `ending` (Tune calls on_trial_complete before it marks it)."""
        done = sum(t.is_finished() or t is ending for t in trials)
        return f"[{done}/{self.sweep.search.trial_count} done]"

    def _line(self, line: str) -> None:
        if _view is None:  # a live table shows the same
            self.echo(line)

    def _close_run(self, trial_id: str, failed: bool, stopped: bool) -> None:
        state = json.loads((self.run_dir / STATE_FILE).read_text())
        trial_runs.end_by_tune(
            state["tracking_uri"],
            state["experiment_id"],
            state["parent_run_id"],
            trial_id,
            failed=failed,
            stopped=stopped,
        )


def echo_stderr(line: str) -> None:
    """Progress lines (module-level: Tune pickles the callback that holds it, by reference). While
    the live table runs, sys.stderr is rich's proxy, which prints the line above the table."""
    print(line, file=sys.stderr, flush=True)


def best_trial(sweep: SweepSpec, trials: Sequence[Trial]) -> Trial | None:
    """The best trial by the first searched metric, which only a trial's final report carries."""
    metric = sweep.search.metrics[0]
    scored = [t for t in trials if isinstance(t.run_metadata.last_result.get(metric), int | float)]
    order = ranked(scored, lambda t: t.run_metadata.last_result[metric], sweep.search.modes[0])
    return order[0] if order else None


# --------------------------------------------------------------------------------------------
# The live table: what it shows (a snapshot of Tune's trials), and how it draws it


@dataclass(frozen=True)
class Row:
    trial_id: str
    state: str  # pending | running | evaluating | done | stopped early | failed (| paused)
    retries: int  # restarts after failures, while the trial goes on
    params: tuple[str, ...]
    epoch: int  # epochs reported
    epochs: int
    proxy: float | None  # the select-slice metric: not reported every epoch, so its last value
    objective: float | None  # the first searched metric, from the final report
    seconds: float | None  # Tune's time_total_s at the last report; None before the trial starts
    since: float | None  # running: the wall time from which its clock ticks on, from `seconds`
    collapsed: bool = False  # its robust accuracy collapsed on the select slice (catastrophic overfitting)


@dataclass(frozen=True)
class Frame:
    rows: tuple[Row, ...]
    keys: tuple[str, ...]  # the searched keys, one column each
    metrics: tuple[str, str]  # the proxy's name and the objective's
    total: int
    best: Row | None

    @property
    def done(self) -> int:
        return sum(r.state in FINISHED for r in self.rows)

    @property
    def progress(self) -> float:
        """Trials done, and running ones by the fraction of their epochs: what the ETA divides."""
        return sum(1.0 if r.state in FINISHED else r.epoch / r.epochs for r in self.rows)


def snapshot(sweep: SweepSpec, trials: Sequence[Trial], started: Mapping[str, float]) -> Frame:
    """What the live table shows, read from Tune's trials. `started` (when this driver started a
    trial's actor) keeps a resumed or retried trial's clock from counting the time it was stopped."""
    keys = (*sweep.search.grid, *sweep.search.space) + ((REPEAT_KEY,) if sweep.search.repeats > 1 else ())
    rows = tuple(_row(sweep, t, keys, started.get(t.trial_id)) for t in trials)
    best = best_trial(sweep, trials)
    return Frame(
        rows,
        keys,
        (sweep.trial.eval.select_metric, sweep.search.metrics[0]),
        sweep.search.trial_count,
        next((r for r in rows if best is not None and r.trial_id == best.trial_id), None),
    )


def _row(sweep: SweepSpec, trial: Trial, keys: tuple[str, ...], started: float | None) -> Row:
    meta = trial.run_metadata  # (not trial.last_result: before a first report it waits on the actor)
    last, running = meta.last_result, trial.status == Trial.RUNNING
    objective = last.get(sweep.search.metrics[0])
    epoch, epochs = last.get("epoch", -1) + 1, _epochs(sweep, trial)
    return Row(
        trial_id=trial.trial_id,
        state=_state(trial.status, objective, trained=epoch >= epochs),
        retries=0 if trial.is_finished() else trial.num_failures,
        params=tuple(shown(trial.config.get(k), width=14, missing="None") for k in keys),
        epoch=epoch,
        epochs=epochs,
        proxy=meta.metric_analysis.get(sweep.trial.eval.select_metric, {}).get("last"),
        objective=objective,
        seconds=None if meta.start_time is None else last.get("time_total_s", 0.0),
        since=max(meta.last_result_time, started or meta.start_time or 0.0) if running else None,
        collapsed=meta.metric_analysis.get("select/collapsed", {}).get("max") == 1,
    )


def _state(status: str, objective: float | None, trained: bool) -> str:
    if status == Trial.TERMINATED:
        return "stopped early" if objective is None else "done"
    if status == Trial.RUNNING:
        return "evaluating" if trained else "running"  # evaluating: after the last epoch's report
    return "failed" if status == Trial.ERROR else status.lower()


class LiveView:
    """The live display's content: the newest frame, set on Tune's thread and drawn on rich's
    refresh thread with the clocks running."""

    def __init__(self) -> None:
        self.since = time.time()
        self.started: dict[str, float] = {}  # trial id: when this driver last started its actor
        self.frame: Frame | None = None
        self._start: float | None = None  # the progress when this driver started: the ETA counts from it

    def show(self, frame: Frame) -> None:
        if self._start is None:
            self._start = frame.progress
        self.frame = frame

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.render(time.time(), console.size.height)

    def render(self, now: float, height: int) -> Group:
        if self.frame is None:
            return Group(Text("waiting for Tune to start the trials…", style="dim"))
        frame, elapsed = self.frame, now - self.since
        rate = (frame.progress - (self._start or 0.0)) / elapsed if elapsed > 0 else 0.0
        eta = _clock((frame.total - frame.progress) / rate) if rate > 0 else "–"
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=frame.total, completed=frame.progress, width=30),
            Text(f"{frame.done}/{frame.total} trials done", style="bold"),
            Text(f"{_clock(elapsed)} elapsed, ETA {eta}", style="dim"),
        )
        parts: list = [bar, _table(frame, now, room=max(3, height - CHROME))]
        if (b := frame.best) is not None:
            values = ", ".join(f"{_label(k, frame.keys)}={v}" for k, v in zip(frame.keys, b.params, strict=True))
            what = (b.trial_id, "bold"), f" {frame.metrics[1]}=", (shown(b.objective, missing="None"), "bold green")
            parts.append(Text.assemble("best so far: ", *what, f" ({values})" if values else ""))
        return Group(*parts)

    def recap(self) -> str:
        done = f"{self.frame.done}/{self.frame.total} trials done" if self.frame else "no trial started"
        return f"{done} in {_clock(time.time() - self.since)}"


def _table(frame: Frame, now: float, room: int) -> Table:
    rows, hidden = _visible(frame, room)
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        header_style="bold",
        caption_justify="left",
        caption=hidden or None,
    )
    names = ("trial", "state", *(_label(k, frame.keys) for k in frame.keys), "epoch", *frame.metrics, "time")
    whole = {0, 1, len(names) - 4, len(names) - 1}  # trial, state, epoch, time: a narrow terminal cuts the others
    for i, name in enumerate(names):
        table.add_column(name, justify="left" if i < 2 else "right", no_wrap=i in whole, overflow="ellipsis")
    for r in rows:
        table.add_row(*_cells(frame, r, now))
    return table


def _cells(frame: Frame, r: Row, now: float) -> list[Text]:
    best = frame.best is not None and r.trial_id == frame.best.trial_id
    seconds = None if r.seconds is None else r.seconds + (now - r.since if r.since is not None else 0.0)
    return [
        Text(r.trial_id, style="bold" if best else ""),
        Text(r.state + (f" (retry {r.retries})" if r.retries else ""), style=STATES[r.state])
        + (Text(" collapsed", style="bold yellow") if r.collapsed else Text("")),
        *map(Text, r.params),
        Text(f"{r.epoch}/{r.epochs}" if r.epoch else ""),
        Text(shown(r.proxy, missing="")),
        Text(shown(r.objective, missing=""), style="bold green" if best else ""),
        Text(_clock(seconds) if seconds is not None else ""),
    ]


def _visible(frame: Frame, room: int) -> tuple[list[Row], str]:
    """Every row if they fit. Else, in trial order: the running ones, the best, the most recently
    finished, then the next to start; and what the hidden rows are, counted by state."""
    if len(frame.rows) <= room:
        return list(frame.rows), ""
    keep = {r.trial_id for r in frame.rows if r.state in ("running", "evaluating")}
    keep |= {frame.best.trial_id} if frame.best else set()
    finished = [r for r in reversed(frame.rows) if r.state in FINISHED]
    waiting = [r for r in frame.rows if r.state not in FINISHED and r.trial_id not in keep]
    for r in finished + waiting:
        if len(keep) >= room:
            break
        keep.add(r.trial_id)
    hidden = Counter(r.state for r in frame.rows if r.trial_id not in keep)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(hidden.items(), key=lambda x: -x[1]))
    return [r for r in frame.rows if r.trial_id in keep], f"… {hidden.total()} more trials: {counts}"


# --------------------------------------------------------------------------------------------
# The live display's lifetime: while tuner.fit() runs


_view: LiveView | None = None  # set while the live display runs: module state, never in the pickled callback


@contextmanager
def live_view() -> Iterator[None]:
    """A live table on stderr while the block runs, when stderr is a terminal that can redraw it
    (else the callback prints lines). However the block ends (finished, Ctrl-C, an error) the table
    is cleared and one line says how far the trials got, so what follows prints as usual."""
    global _view
    console = Console(stderr=True)
    if not wants_live(console):
        yield
        return
    view = LiveView()
    # Lines written to sys.stderr or sys.stdout (echo, Ray's warnings) print above the table.
    live = Live(
        view,
        console=console,
        refresh_per_second=2,
        transient=True,
        redirect_stderr=True,
        redirect_stdout=sys.stdout.isatty(),
    )
    _view = view
    try:
        with _logs_through(console), live:
            yield
    finally:
        _view = None
        console.print(view.recap(), highlight=False)


def wants_live(console: Console) -> bool:
    """A terminal that redraws (rich: not TERM=dumb, not TTY_INTERACTIVE=0), unless SATUNE_PLAIN
    (`satune sweep --plain`) asks for lines. NO_COLOR keeps the table, without colours."""
    plain = os.environ.get("SATUNE_PLAIN", "").lower() not in ("", "0", "false", "no")
    return not plain and sys.stderr.isatty() and console.is_interactive


@contextmanager
def _logs_through(console: Console) -> Iterator[None]:
    """Rich log handlers print through a Console of their own, which would write over the table:
    they lend the live one's while it runs."""
    lent = [(h, h.console) for h in logging.getLogger().handlers if isinstance(h, RichHandler)]
    for h, _ in lent:
        h.console = console
    try:
        yield
    finally:
        for h, own in lent:
            h.console = own


# --------------------------------------------------------------------------------------------
# Formatting


def _epochs(sweep: SweepSpec, trial: Trial) -> int:
    return int(trial.config.get("train.epochs", sweep.trial.train.epochs))


def _label(key: str, keys: Sequence[str]) -> str:
    """A searched key's last part (`w_A`), unless another key ends alike."""
    short = key.rsplit(".", 1)[-1]
    return key if sum(k.rsplit(".", 1)[-1] == short for k in keys) > 1 else short


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
