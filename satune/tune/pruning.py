"""A finished trial's checkpoints emptied, once nothing can need what they hold.

Tune keeps a trial's last two checkpoints (`num_to_keep=2`: the state it saved every few seconds
may name the one before the newest) for a retry or --resume to restart from. A finished trial (done,
or stopped by its scheduler) is never restarted, and what the final stage, `satune eval`, the report
and a transfer read of it is its MLflow run (the selected weights, result.json). So its checkpoints
are emptied once Tune holds it finished: each keeps only the trainable's meta.json (its MLflow run
and epochs, a few KiB). A trial that failed for good keeps them: --resume retries it from there.

Tune copies its saved state from the driver's staging folder to storage in the background, so the
state a --resume would read may lag a save behind. Should the driver die in that moment, the trial
restarts from an emptied checkpoint and ends at once from its meta.json (trainable._ended): its
MLflow run finished, or its scheduler had stopped it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ray import tune
from ray.tune.experiment import Trial

from satune.tune.trainable import META_FILE
from satune.tune.upstream import checkpoint_entries


def prune(trials: Iterable[Trial]) -> int:
    """Empty the checkpoints of these finished trials but for their meta.json; how many files went."""
    gone = 0
    for trial in trials:
        assert trial.status == Trial.TERMINATED
        fs, files = checkpoint_entries(trial)
        for path, is_dir in files:
            if path.rsplit("/", 1)[-1] != META_FILE:
                fs.delete_dir(path) if is_dir else fs.delete_file(path)
                gone += 1
    return gone


class PruneFinished(tune.Callback):
    """While Tune runs (local storage): each time Tune saves its state (it asks its callbacks for
    theirs just after writing the trials' statuses), the checkpoints of the trials that were finished
    at the save before are emptied."""

    def __init__(self) -> None:
        self._trials: list[Trial] = []
        self._finished: set[str] = set()  # finished at the last save, not yet emptied
        self._pruned: set[str] = set()

    def on_step_begin(self, iteration, trials, **info):
        self._trials = trials

    def get_state(self) -> dict | None:
        prune(t for t in self._trials if t.trial_id in self._finished and t.status == Trial.TERMINATED)
        self._pruned |= self._finished
        self._finished = {t.trial_id for t in self._trials if t.status == Trial.TERMINATED} - self._pruned
        return None

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the Tuner: no trials travel
        return {"_trials": [], "_finished": set(), "_pruned": set()}
