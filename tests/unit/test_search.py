"""Grid x Optuna and replicates, driven as Tune drives a searcher (no Ray started)."""

import optuna
import pytest
from optuna.trial import TrialState

from satune.specs import parse_sweep
from satune.sweep.summary import REPEAT_KEY
from satune.tune.tuner import _tune_config


def searcher(tmp_path, **search):
    spec = parse_sweep(
        {
            "name": "s",
            "storage": str(tmp_path / "runs"),
            "trial": {
                "data": {"dataset": "digits"},
                "threat": {"norm": "linf", "eps": 0.1},
                "method": {"kind": "sat", "fraction": 0.5},
            },
            "search": {"space": {"method.w_A": {"loguniform": [0.5, 4]}}, "algorithm": "random", **search},
        }
    )
    (tmp_path / "run").mkdir(exist_ok=True)
    config = _tune_config(spec, tmp_path / "run")
    return config.search_alg, config.num_samples, spec


def studies(alg):
    inner = alg
    while not hasattr(inner, "_storage"):
        inner = getattr(inner, "inner", None) or inner.searchers[0]
    storage = inner._storage
    return {name: optuna.load_study(study_name=name, storage=storage) for name in optuna.get_all_study_names(storage)}


def test_every_grid_cell_gets_its_own_study_and_exactly_its_budget(tmp_path):
    grid = {"method.fraction": [0.3, 0.5], "method.ranking": ["random", "entropy_hardest"]}
    alg, total, spec = searcher(tmp_path, grid=grid, num_samples=3)
    assert total == spec.search.trial_count == 12
    configs = []
    while (config := alg.suggest(f"t{len(configs)}")) != "FINISHED":
        configs.append(config)
        alg.on_trial_complete(f"t{len(configs) - 1}", {"proxy/pgd_acc": config["method.fraction"], "done": True})
    assert len(configs) == 12
    found = studies(alg)
    assert sorted(found) == sorted(
        f"s/method.fraction={f},method.ranking={r}" for f in (0.3, 0.5) for r in ("random", "entropy_hardest")
    )
    for name, study in found.items():
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
        cell = [
            c
            for c in configs
            if name.endswith(f"method.fraction={c['method.fraction']},method.ranking={c['method.ranking']}")
        ]
        assert len(cell) == 3  # the cell's values travel with each of its configurations


def test_replicates_tell_optuna_the_mean_of_their_repeats(tmp_path):
    alg, total, spec = searcher(
        tmp_path, repeats=3, num_samples=2, metric=["proxy/pgd_acc", "proxy/clean_acc"], mode=["max", "max"]
    )
    assert total == 6
    configs = [alg.suggest(f"t{i}") for i in range(3)]
    assert [c[REPEAT_KEY] for c in configs] == [0, 1, 2]
    assert len({c["method.w_A"] for c in configs}) == 1  # one configuration, three seeds
    for i, pgd in enumerate((0.1, 0.2, 0.6)):
        alg.on_trial_complete(f"t{i}", {"proxy/pgd_acc": pgd, "proxy/clean_acc": 0.9, "done": True})
    (trial,) = studies(alg)["s"].trials
    assert trial.state == TrialState.COMPLETE and trial.values == pytest.approx([0.3, 0.9])

    # a configuration the scheduler stopped in every repeat is PRUNED; one stopped repeat is left out
    more = [alg.suggest(f"u{i}") for i in range(3)]
    assert more[0]["method.w_A"] != configs[0]["method.w_A"]
    for i in range(3):
        alg.on_trial_complete(f"u{i}", {"select/pgd_acc": 0.1, "done": True})
    assert studies(alg)["s"].trials[1].state == TrialState.PRUNED


def test_replicates_survive_a_restore(tmp_path):
    alg, _, _ = searcher(tmp_path, repeats=2, grid={"method.fraction": [0.3, 0.5]}, num_samples=1)
    first = alg.suggest("a")
    alg.suggest("b")
    alg.on_trial_complete("a", {"proxy/pgd_acc": 0.2, "done": True})
    alg.save(str(tmp_path / "searcher.pkl"))
    fresh, _, _ = searcher(tmp_path, repeats=2, grid={"method.fraction": [0.3, 0.5]}, num_samples=1)
    fresh.restore(str(tmp_path / "searcher.pkl"))  # --resume: the group of "a" and "b" is still known
    fresh.on_trial_complete("b", {"proxy/pgd_acc": 0.4, "done": True})
    study = studies(fresh)[f"s/method.fraction={first['method.fraction']}"]
    assert study.trials[0].value == pytest.approx(0.3)
