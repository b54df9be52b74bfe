"""Every way a sweep stops, in one place: Ctrl-C and SIGTERM (the same, in every phase), a tracking
server or an object store gone for good (stopped as Ctrl-C stops it), the fault hooks the tests use,
and how an interrupted run is left for --resume.

While a sweep runs, SIGINT raises `Stop` with its reason ("Ctrl-C", "SIGTERM", "MLflow unreachable",
...), not a bare KeyboardInterrupt: an outage stops the sweep through the same signal because that is
how Tune's loop is stopped with its state saved (the driver's Tune phase keeps Tune's own SIGINT
handler). Everything unwinds to run_sweep, which calls `end_interrupted`. Around the local MLflow
server's fork, tracking/server.py holds signals back."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from satune import tracking, watchdog
from satune.specs import SweepSpec
from satune.sweep import trial_runs
from satune.sweep.rundir import RunDir


class Stop(BaseException):
    """The sweep stops, resumably, for a named reason. A BaseException, as KeyboardInterrupt is: no
    `except Exception` on the way (a warning that a report failed, say) takes it for an error."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class Stops:
    """Why a running sweep stops, once it does. `outage` stops it for a server or a store gone for
    good; `signals` turns Ctrl-C and SIGTERM into a `Stop` that names them (or the outage)."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo
        self.reason: str | None = None
        self.tracking_lost = threading.Event()  # MLflow is gone: nothing more can be logged there
        self.store_lost = threading.Event()  # the object store is gone: Tune's saved state is out of reach

    def outage(self, lost: threading.Event, what: str, why: str, where: str = "") -> None:
        """Stop the sweep as Ctrl-C does (state saved, resumable), rather than let trials fail and
        retry against what is gone."""
        self.echo(f"{what}: {why}; stopping the sweep: once it answers again, --resume continues{where}")
        self.reason = f"{what} unreachable"
        lost.set()
        os.kill(os.getpid(), signal.SIGINT)

    def raise_for_outage(self) -> None:
        """After Tune's loop returned: an outage stopped it."""
        if self.tracking_lost.is_set() or self.store_lost.is_set():
            raise Stop(self.reason or "an outage")

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT raises `Stop`; SIGTERM (`kill`, a job scheduler) ends a sweep the way Ctrl-C does, in
        every phase: Tune saves its state while it runs, and outside it `Stop` unwinds every clean-up.
        A satune started with SIGINT ignored (`satune sweep ... &` from a script, nohup) keeps it
        ignored. ray.init installs its own SIGTERM handler (sys.exit, which skips Tune's save):
        `take_sigterm` replaces it again."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        if previous[0] is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._on_sigint)
        self.take_sigterm()
        try:
            yield
        finally:
            for signum, handler in zip((signal.SIGINT, signal.SIGTERM), previous, strict=True):
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def take_sigterm(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigint(self, *_) -> None:
        raise Stop(self.reason or "Ctrl-C")

    def _on_sigterm(self, *_) -> None:
        """As Ctrl-C: through SIGINT's handler (Tune's, while it runs). With SIGINT ignored there is
        none outside Tune: the stop is raised here, or SIGTERM would be lost too."""
        self.reason = self.reason or "SIGTERM"
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
            raise Stop(self.reason)
        os.kill(os.getpid(), signal.SIGINT)


class SweepInterrupted(Exception):
    """The sweep stopped (Ctrl-C, SIGTERM, an outage): the run is saved and ended, resumable (run_dir
    None: nothing was written)."""

    def __init__(self, run_dir: Path | None, reason: str = "interrupted"):
        self.run_dir = run_dir
        self.reason = reason
        super().__init__(f"{reason} ({run_dir})")


def store_watched(sweep: SweepSpec, run: RunDir, stops: Stops):
    """While the block runs, an object store that has not answered for storage_patience_s stops
    the sweep as Ctrl-C does; this process stops waiting for it at once (Tune's last saves)."""
    patience = sweep.storage_patience_s

    def on_lost(why: str) -> None:
        run.storage.give_up()
        stops.outage(
            stops.store_lost,
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
        trial_runs.end_interrupted(uri, state["experiment_id"], parent)
        tracking.end_run(uri, parent, "KILLED")
    except Exception as exc:  # the server may be what went away; the state already says what to do
        echo(f"MLflow: could not mark the runs KILLED ({type(exc).__name__}); --resume will re-open them")
