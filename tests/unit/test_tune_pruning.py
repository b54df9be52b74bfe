"""A finished trial's checkpoints are emptied but for the trainable's meta.json; a failed one's are kept
(satune/tune/pruning.py). Tune's own Trial and storage objects, on a local folder."""

from pathlib import Path

from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial

from satune.tune.pruning import PruneFinished, prune
from satune.tune.trainable import META_FILE


def trial(tmp_path: Path, trial_id: str, status: str) -> Trial:
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="tune", trial_dir_name=trial_id)
    made = Trial("run", stub=True, storage=storage, trial_id=trial_id)
    made.set_status(status)
    for n in range(2):  # Tune keeps two
        folder = Path(storage.trial_fs_path) / f"checkpoint_00000{n}"
        (folder / "sub").mkdir(parents=True)
        for name in ("state.pt", META_FILE, "sub/more.bin"):
            (folder / name).write_text(name)
    (Path(storage.trial_fs_path) / "result.json").write_text("{}")
    return made


def kept(t: Trial) -> set[str]:
    folder = Path(t.storage.trial_fs_path)
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_a_finished_trials_checkpoints_keep_only_their_meta(tmp_path):
    done = trial(tmp_path, "done", Trial.TERMINATED)
    assert prune([done]) == 4
    assert kept(done) == {"result.json", f"checkpoint_000000/{META_FILE}", f"checkpoint_000001/{META_FILE}"}
    assert prune([done]) == 0  # again: nothing more goes


def test_while_tune_runs_a_trial_is_emptied_at_the_save_after_the_one_that_found_it_finished(tmp_path):
    done, failed, running = (trial(tmp_path, s.lower(), s) for s in (Trial.TERMINATED, Trial.ERROR, Trial.RUNNING))
    full = kept(done)
    callback = PruneFinished()
    callback.on_step_begin(0, [done, failed, running])
    callback.get_state()  # the save that first holds it finished: Tune may still be copying it to storage
    assert kept(done) == full
    running.set_status(Trial.TERMINATED)
    callback.get_state()
    assert kept(done) == {"result.json", f"checkpoint_000000/{META_FILE}", f"checkpoint_000001/{META_FILE}"}
    assert kept(running) == full and kept(failed) == full  # one save later; --resume retries a failed one
    callback.get_state()
    assert len(kept(running)) == 3 and kept(failed) == full
