"""A sweep's Optuna journal (one study per grid cell), and the one Optuna internal satune relies on:
a trial's storage id (`FrozenTrial._trial_id`), which `set_trial_state_values` takes. Pinned by
tests/unit/test_sweep_journal.py."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState


def storage_id(trial: FrozenTrial) -> int:
    return trial._trial_id


def fail_running(journal: Path) -> int:
    """Every trial still RUNNING in the journal's studies marked FAIL (their Tune trials are gone);
    how many."""
    storage = JournalStorage(JournalFileBackend(str(journal)))
    failed = 0
    for name in optuna.get_all_study_names(storage):  # one per grid cell
        study = optuna.load_study(study_name=name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_state_values(storage_id(t), TrialState.FAIL)
            failed += 1
    return failed
