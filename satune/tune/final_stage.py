"""The sweep's second stage: AutoAttack on the winners of the search, over the final slice.

The search ranks trials on the select slice; when it ends, the top-k trials (or the Pareto front) are
evaluated with the sweep's `final_eval` settings, each as a Ray task with its own resources, all at
once as far as the cluster allows. Each task logs into its trial's own MLflow run and tags it with
the settings it ran: a resumed sweep skips the evaluations that finished.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import ray

from satune import tracking
from satune.specs import SweepSpec
from satune.specs.final import Settings
from satune.sweep.rundir import SweepError
from satune.sweep.summary import TrialRow, configurations, pareto_front, ranked
from satune.tune import cluster


def winners(sweep: SweepSpec, rows: list[TrialRow], top_k: int | str) -> list[TrialRow]:
    """The finished trials to evaluate, best first by the search's first metric: the top k, or the
    Pareto front of the search's metrics. With repeats, configurations compete by their means,
    and every repeat of a winning configuration is evaluated (its spread is part of its result)."""
    metrics, modes = sweep.search.metrics, sweep.search.modes
    scored = [r for r in rows if r.status == "TERMINATED" and all(m in r.metrics for m in metrics)]
    groups = {g.key: g for g in configurations(scored)}
    candidates = [g.as_row(metrics) for g in groups.values()] if sweep.search.repeats > 1 else scored
    if top_k == "pareto":
        candidates = pareto_front(candidates, metrics, modes)
    order = ranked(candidates, lambda r: r.metrics[metrics[0]], modes[0], tie=lambda r: r.trial_id)
    chosen = order if isinstance(top_k, str) else order[:top_k]
    return [t for r in chosen for t in groups[r.trial_id].rows] if sweep.search.repeats > 1 else chosen


def run(
    sweep: SweepSpec, rows: list[TrialRow], *, uri: str, experiment_id: str, parent: str, echo: Callable[[str], None]
) -> None:
    """Evaluate the winners that have not been evaluated with these settings yet; add their final/*
    numbers to their rows."""
    final = sweep.final_eval
    assert final is not None
    chosen = winners(sweep, rows, final.top_k)
    settings = Settings(final.autoattack)
    key = settings.key()
    runs = {r.trial_id: r for r in tracking.child_runs(uri, experiment_id, parent)}
    todo = [r for r in chosen if runs[r.trial_id].tags.get(tracking.FINAL_TAG) != key]
    aa = final.autoattack
    echo(
        f"final evaluation: AutoAttack {aa.version} on {aa.n} final-slice examples for {len(chosen)} trials "
        f"({', '.join(r.trial_id for r in chosen)}); {len(chosen) - len(todo)} done before"
    )
    task = ray.remote(**cluster.ray_options(final.resources))(_evaluate)
    threads = max(1, int(final.resources.cpu))
    pending = {task.remote(uri, runs[r.trial_id].run_id, aa.model_dump(), threads): r for r in todo}
    while pending:
        [ready], _ = ray.wait(list(pending))
        row = pending.pop(ready)
        metrics = ray.get(ready)
        echo(
            f"final evaluation of trial {row.trial_id}: final/aa_acc={metrics['final/aa_acc']:.4f} "
            f"[{metrics['final/aa_acc_lo']:.3f}, {metrics['final/aa_acc_hi']:.3f}] on {metrics['final/aa_n']:.0f}"
        )
        _injected_kill()
    for row in chosen:  # what the runs hold now, the evaluations of earlier attempts included
        logged = tracking.get_run(uri, runs[row.trial_id].run_id).metrics
        row.metrics |= {k: v for k, v in logged.items() if k.startswith("final/")}


def _evaluate(uri: str, run_id: str, autoattack: dict, threads: int) -> dict[str, float]:
    from satune.final import evaluate_run
    from satune.specs import FinalAutoAttackSpec

    return evaluate_run(uri, run_id, Settings(FinalAutoAttackSpec.model_validate(autoattack)), threads=threads)


def _injected_kill() -> None:
    """Fault injection for tests: SATUNE_KILL_IN_FINAL_STAGE=1 kills the driver (SIGKILL, no clean-up)
    once the first evaluation has been logged, as a lost machine would."""
    if os.environ.get("SATUNE_KILL_IN_FINAL_STAGE") == "1":
        os.kill(os.getpid(), signal.SIGKILL)


def evaluate_sweep(
    sweep: SweepSpec, settings: Settings, *, top_k: int | str, echo: Callable[[str], None]
) -> list[tuple[str, dict[str, float]]]:
    """`satune eval SWEEP`: the winners of the sweep's newest run, evaluated in this process one
    after the other (no Ray), each logged into its own run."""
    from satune.final import evaluate_run
    from satune.sweep.rundir import latest_run_dir, read_state

    run_dir = latest_run_dir(sweep)
    if run_dir is None:
        raise SweepError(f"no run of sweep '{sweep.name}' in {sweep.storage}: run `satune sweep` first")
    state = read_state(run_dir)
    if "parent_run_id" not in state:
        raise SweepError(f"the run {run_dir} never reached MLflow: nothing to evaluate")
    with tracking.serving(sweep.tracking.uri, sweep.storage, "satune sweep") as (uri, _):
        children = tracking.child_runs(uri, state["experiment_id"], state["parent_run_id"])
        run_ids = {r.tags[tracking.TRIAL_TAG]: r.run_id for r in children if tracking.TRIAL_TAG in r.tags}
        rows = [
            TrialRow(
                r.tags[tracking.TRIAL_TAG],
                "TERMINATED" if r.status == "FINISHED" else r.status,
                {},
                dict(r.metrics),
            )
            for r in children
            if tracking.TRIAL_TAG in r.tags
        ]
        chosen = winners(sweep, rows, top_k)
        if not chosen:
            raise SweepError(f"{run_dir} has no finished trial with {sweep.search.metrics[0]} to evaluate")
        results = []
        for row in chosen:
            echo(f"evaluating trial {row.trial_id} (run {run_ids[row.trial_id]})")
            results.append((row.trial_id, evaluate_run(uri, run_ids[row.trial_id], settings)))
        return results
