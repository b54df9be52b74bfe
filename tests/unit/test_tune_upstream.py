"""Pins each private internal of Ray that satune relies on (satune/tune/upstream.py): after a Ray
upgrade that changes one, this file fails and says which, instead of a sweep."""

import inspect
import re

import optuna
from ray.tune import ResultGrid
from ray.tune.search.optuna import OptunaSearch

from satune.tune import upstream


def test_a_result_grid_keeps_its_experiment_analysis_and_tunes_trials():
    """result_trials reads ResultGrid._experiment_analysis.trials: Tune's Trial objects as they are in memory."""
    assert "self._experiment_analysis = experiment_analysis" in inspect.getsource(ResultGrid.__init__)
    assert "self._experiment_analysis.trials" in inspect.getsource(ResultGrid.__init__)


def test_optuna_search_keeps_its_trials_study_and_completed_set(tmp_path):
    """FinalResultOptunaSearch reads _ot_trials (Tune's id -> Optuna's trial), _ot_study, _completed_trials."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    search = upstream.FinalResultOptunaSearch(
        space={"x": optuna.distributions.FloatDistribution(0, 1)},
        metric="m",
        mode="max",
        storage=storage,
        study_name="s",
    )
    search.suggest("t1")
    assert isinstance(search._ot_trials["t1"], optuna.trial.Trial)
    assert isinstance(search._ot_study, optuna.Study) and isinstance(search._completed_trials, set)
    search.on_trial_complete("t1", {"m": 0.5})
    assert "t1" in search._completed_trials and search._told() == {0}
    names = set(re.findall(r"self\.(_ot_trials|_ot_study|_completed_trials)\b", inspect.getsource(OptunaSearch)))
    assert names == {"_ot_trials", "_ot_study", "_completed_trials"}


def test_rays_config_can_be_read_again():
    """cluster's token check re-reads RAY_AUTH_MODE as Ray does, through ray._raylet.Config.initialize."""
    from ray._raylet import Config  # type: ignore[attr-defined]

    assert callable(Config.initialize)
    upstream.reload_ray_config()


def test_the_gcs_stubs_satune_asks_exist():
    """The cluster preflight asks the GCS for its id and for CLUSTER_METADATA through the generated stubs."""
    pb, stubs = upstream.gcs_stubs()
    assert pb.GetClusterIdRequest() is not None
    assert pb.InternalKVGetRequest(namespace=b"cluster", key=b"CLUSTER_METADATA").key == b"CLUSTER_METADATA"
    assert hasattr(stubs, "NodeInfoGcsServiceStub") and hasattr(stubs, "InternalKVGcsServiceStub")
    for method in ("GetClusterId",):
        assert method in inspect.getsource(stubs.NodeInfoGcsServiceStub)
    assert "InternalKVGet" in inspect.getsource(stubs.InternalKVGcsServiceStub)
