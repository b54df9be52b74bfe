"""How a trial's MLflow run ends, decided here and nowhere else. A run ends once per attempt, by
whoever sees the attempt end first:

- the trial itself (in its actor): FINISHED once its final report is logged; FAILED when it raised
  (Tune may retry it from its checkpoint, and the retry re-opens the same run);
- Tune, in the driver: a trial its scheduler stopped between reports ends FINISHED and is tagged
  stopped early (its own code never reached its end); one failed for good ends FAILED;
- an interrupted sweep (Ctrl-C, SIGTERM, an outage): every run still RUNNING ends KILLED, and
  --resume re-opens it;
- an orphan (a run whose trial Tune never recorded, because the driver died first): KILLED and
  deleted, restorably.
"""

from __future__ import annotations

from satune import tracking


def end_attempt(uri: str, run_id: str, *, raised: bool) -> None:
    """The trial's own code ends its run: it raised, or it logged its final report."""
    tracking.end_run(uri, run_id, "FAILED" if raised else "FINISHED")


def end_by_tune(uri: str, experiment_id: str, parent: str, trial_id: str, *, failed: bool, stopped: bool) -> None:
    """Tune is done with the trial: failed for good, or complete (`stopped`: by the scheduler,
    between reports, so its run never ended itself)."""
    status = "FAILED" if failed else "FINISHED"
    for r in tracking.runs_of_trial(uri, experiment_id, parent, trial_id):  # (not its siblings: O(1) per trial)
        if r.status == status:
            continue
        if stopped:
            tracking.set_tags(uri, r.run_id, {tracking.STOPPED_EARLY_TAG: "true"})
        if stopped or r.status == "RUNNING":
            tracking.end_run(uri, r.run_id, status)


def end_interrupted(uri: str, experiment_id: str, parent: str) -> None:
    """The sweep stopped: the trials' runs still RUNNING end KILLED (a resumed trial re-opens its own)."""
    for r in tracking.child_runs(uri, experiment_id, parent):
        if r.status == "RUNNING":
            tracking.end_run(uri, r.run_id, "KILLED")


def discard_orphans(uri: str, runs: list[tracking.RunRecord], trial_ids: set[str]) -> None:
    """Every one of the sweep's `runs` whose trial is not among Tune's `trial_ids`: said why, ended
    KILLED, deleted (MLflow keeps deleted runs, restorable), so that every trial Tune ran has exactly
    one run."""
    for r in runs:
        if r.trial_id not in trial_ids:
            if r.status == "RUNNING":
                tracking.end_run(uri, r.run_id, "KILLED")
            tracking.discard(uri, r.run_id, _ORPHAN)


_ORPHAN = "its driver died before Ray Tune recorded the trial; --resume ran the configuration again as another trial"
