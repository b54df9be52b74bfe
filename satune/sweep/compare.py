"""`satune ui`: a sweep's trials side by side, in the MLflow UI on its newest run's trials (local mode:
its store, served by satune) and in optuna-dashboard on its Optuna studies. The CLI passes `echo` for
what to print, and stops both with Ctrl-C."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from satune import tracking
from satune.specs import SweepSpec
from satune.sweep.rundir import JOURNAL_FILE, SweepError, latest_run_dir, read_state
from satune.sweep.study_dashboard import StudyDashboard
from satune.sweep.summary import shown_metrics


def newest_run(spec: SweepSpec, file: Path) -> tuple[Path, dict]:
    """The sweep's newest run that reached MLflow, and its state."""
    run_dir = latest_run_dir(spec)
    state = read_state(run_dir) if run_dir is not None else {}
    if run_dir is None or "parent_run_id" not in state:
        raise SweepError(f"no MLflow run of sweep '{spec.name}' under {spec.storage}: run `satune sweep {file}` first")
    return run_dir, state


def compare(
    spec: SweepSpec,
    file: Path,
    *,
    host: str,
    port: int,
    optuna_port: int,
    open_browser: bool,
    echo: Callable[[str], None],
) -> None:
    """Serve the trials of the sweep's newest run until Ctrl-C (KeyboardInterrupt) or until a server
    stops; with `open_browser`, open them where there is a display."""
    run_dir, state = newest_run(spec, file)
    servers: list[tracking.Served] = []
    with ExitStack() as stack:
        uri, server = stack.enter_context(
            tracking.serving(spec.tracking.uri, spec.storage, f"satune sweep {file}", host, port)
        )
        if server is not None:
            servers.append(server)
            echo(f"MLflow UI: {uri}  (Ctrl-C stops it)")
        link = tracking.trials_view(
            uri,
            spec,
            state["experiment_id"],
            state["parent_run_id"],
            shown_metrics(spec),
            name=f"{spec.name} {run_dir.name}: trials",
        )
        echo(f"the trials of {run_dir}: {link}")
        if (run_dir / JOURNAL_FILE).exists():
            servers.append(stack.enter_context(StudyDashboard(run_dir / JOURNAL_FILE, host, optuna_port)))
            echo(f"optuna-dashboard: {servers[-1].uri}")
        else:
            echo("optuna-dashboard: none (this run has no Optuna study: a plain grid)")
        if open_browser:
            tracking.open_in_browser(link)
        if servers:
            tracking.serve_until_interrupted(servers)
