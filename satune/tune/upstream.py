"""Ray's private internals that satune relies on, in one place. Each is pinned by a test
(tests/unit/test_tune_upstream.py): a Ray upgrade that changes one fails there, loudly, instead of in
a sweep. Keep every private name of Ray out of the other modules."""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState
from ray.tune import ResultGrid
from ray.tune.experiment import Trial
from ray.tune.search.optuna import OptunaSearch


def result_trials(grid: ResultGrid) -> list[Trial]:
    """Tune's own Trial objects behind a finished fit (id, status, config, last result, checkpoint),
    as they are in memory: after an interrupt their statuses differ from the saved state's. The
    public `Result`s carry neither id nor status."""
    return grid._experiment_analysis.trials


def reload_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE into its config when imported: read it again (as Ray itself does)."""
    from ray._raylet import Config  # type: ignore[attr-defined]

    Config.initialize("")


def gcs_stubs() -> tuple[Any, Any]:
    """The GCS's generated protobuf messages and gRPC stubs (what `ray status` speaks), to ask a
    cluster whether it answers and takes our token before ray.init retries for 20 s."""
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    return gcs_service_pb2, gcs_service_pb2_grpc


class FinalResultOptunaSearch(OptunaSearch):
    """OptunaSearch told only of final results.

    Per-epoch reports carry the select-slice proxy, not the searched metrics, and no Optuna pruner
    runs under Tune (ASHA does the stopping), so intermediate values are not sent. It also keeps a
    resumed sweep from reporting into an Optuna trial that finished just before the driver died.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        asked = self._ot_trials.get(trial_id)
        if asked is not None and asked.number in self._told():
            # Told before the driver stopped, after Tune last saved this searcher (a resumed sweep
            # whose trial had finished): Optuna keeps what it was told, and would say so in a warning.
            self._completed_trials.add(trial_id)
            return
        # A trial the scheduler stopped lacks the final metrics: Optuna records it PRUNED. (Told
        # [None, None] for several metrics, Optuna would record a FAIL.)
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if result is not None and any(result.get(m) is None for m in metrics):
            result = None
        super().on_trial_complete(trial_id, result, error)

    def _told(self) -> set[int]:
        assert self._ot_study is not None  # (set up before any trial is suggested)
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return {t.number for t in self._ot_study.get_trials(deepcopy=False, states=finished)}


def checkpoint_entries(trial: Trial) -> tuple[Any, list[tuple[str, bool]]]:
    """What Tune keeps of a trial's checkpoints: the entries (path, is a folder) inside the
    `checkpoint_*` folders of its folder in storage, with that storage's pyarrow filesystem (a local
    disk or an object store)."""
    import pyarrow.fs

    storage = trial.storage
    assert storage is not None  # (every trial Tune ran has its storage)
    fs = storage.storage_filesystem

    def entries(folder: str) -> list:
        return fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))

    folders = [f.path for f in entries(storage.trial_fs_path) if f.type == pyarrow.fs.FileType.Directory]
    inside = [e for f in folders if f.rsplit("/", 1)[-1].startswith("checkpoint_") for e in entries(f)]
    return fs, [(e.path, e.type == pyarrow.fs.FileType.Directory) for e in inside]
