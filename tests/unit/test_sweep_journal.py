"""A sweep's Optuna journal, and the one Optuna internal satune relies on (FrozenTrial._trial_id)."""

import optuna
from optuna.trial import TrialState

from satune.sweep.journal import fail_running, storage_id


def test_running_trials_are_failed_through_their_storage_id(tmp_path):
    journal = tmp_path / "optuna.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    for cell in ("a", "b"):  # one study per grid cell
        study = optuna.create_study(study_name=cell, storage=storage)
        done = study.ask()
        study.tell(done, 1.0)
        study.ask()  # left RUNNING: its Tune trial never came back
    trial = optuna.load_study(study_name="a", storage=storage).trials[1]
    assert isinstance(storage_id(trial), int) and storage.get_trial(storage_id(trial)).number == trial.number
    assert fail_running(journal) == 2
    again = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    for cell in ("a", "b"):
        states = [t.state for t in optuna.load_study(study_name=cell, storage=again).trials]
        assert states == [TrialState.COMPLETE, TrialState.FAIL]
