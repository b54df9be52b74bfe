"""Every way a sweep stops, in one place: Ctrl-C and SIGTERM (the same, in every phase), a tracking
server or an object store gone for good (stopped as Ctrl-C stops it), the fault hooks the tests use,
and how an interrupted run is left for --resume. The driver's Tune phase keeps Tune's own SIGINT
handler (it saves Tune's state); everything else unwinds as KeyboardInterrupt to run_sweep, which
calls `end_interrupted`. Around the local MLflow server's fork, tracking/server.py holds signals back."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from satune import tracking, watchdog
from satune.specs import SweepSpec
from satune.sweep.rundir import RunDir


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM: the run is saved and ended, resumable (run_dir None: nothing was written)."""

    def __init__(self, run_dir: Path | None):
        self.run_dir = run_dir
        super().__init__(f"interrupted ({run_dir})")


def stop_for_outage(lost: threading.Event, echo: Callable[[str], None], what: str, why: str, where: str = "") -> None:
    """The tracking server (or the object store) is gone for good: stop the sweep as Ctrl-C does
    (state saved, resumable), rather than let trials fail and retry against it."""
    echo(f"{what}: {why}; stopping the sweep: once it answers again, --resume continues{where}")
    lost.set()
    os.kill(os.getpid(), signal.SIGINT)


def store_watched(sweep: SweepSpec, run: RunDir, lost: threading.Event, echo: Callable[[str], None]):
    """While the block runs, an object store that has not answered for storage_patience_s stops
    the sweep as Ctrl-C does; this process stops waiting for it at once (Tune's last saves)."""
    patience = sweep.storage_patience_s

    def on_lost(why: str) -> None:
        run.storage.give_up()
        stop_for_outage(
            lost,
            echo,
            "storage",
            f"{sweep.storage} has not answered for {patience:.0f}s ({why})",
            f" (here: {run.path} holds the run's newest files)",
        )

    return watchdog.watched(run.storage.unreachable, patience, on_lost, name="storage-watch")


def injected_interrupt(phase: str) -> None:
    """Fault injection for tests: SATUNE_INTERRUPT_AT=<phase>[:SIGTERM] sends this process a real
    SIGINT (or SIGTERM) at that point, where no test could time a signal from outside."""
    where, _, name = os.environ.get("SATUNE_INTERRUPT_AT", "").partition(":")
    if where == phase:
        os.kill(os.getpid(), getattr(signal, name or "SIGINT"))


@contextmanager
def sigterm_as_sigint():
    """SIGTERM (`kill`, a job scheduler) ends a sweep the way Ctrl-C does, in every phase: Tune
    saves its state while it runs, and outside it KeyboardInterrupt unwinds every clean-up.
    ray.init installs its own handler (sys.exit, which skips Tune's save): it is replaced again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    sigterm_to_sigint()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sigterm_to_sigint() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(*_) -> None:
    """As Ctrl-C: through SIGINT's handler (Tune's, while it runs). A satune started with SIGINT
    ignored (`satune sweep ... &` from a script, nohup) has none outside Tune: the interrupt is
    raised here, or SIGTERM would be lost too."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt
    os.kill(os.getpid(), signal.SIGINT)


def end_interrupted(run: RunDir, echo, tracked: bool = True) -> None:
    """The state first (it decides what --resume does), then MLflow: the parent and every trial
    run still RUNNING end KILLED; a resumed trial re-opens its own run. `tracked`: MLflow answers."""
    if run.path is None:  # nothing was written yet: nothing to resume
        return
    run.save(status="interrupted")
    state = run.state
    if state.get("parent_run_id") is None:
        return
    if not tracked:
        echo("MLflow: the runs stay RUNNING there; --resume re-opens them")
        return
    uri, parent = state["tracking_uri"], state["parent_run_id"]
    try:
        for child in tracking.child_runs(uri, state["experiment_id"], parent):
            if child.info.status == "RUNNING":
                tracking.end_run(uri, child.info.run_id, "KILLED")
        tracking.end_run(uri, parent, "KILLED")
    except Exception as exc:  # the server may be what went away; the state already says what to do
        echo(f"MLflow: could not mark the runs KILLED ({type(exc).__name__}); --resume will re-open them")
