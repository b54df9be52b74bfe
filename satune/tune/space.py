"""search.space -> what Tune and Optuna take: Optuna distributions and samplers, or a Tune grid."""

from __future__ import annotations

from typing import Any

from satune.specs import DomainSpec, SearchSpec

REPEAT_KEY = "repeat"  # grid sweeps: which repetition of the grid a trial is (part of its seed)


def optuna_space(search: SearchSpec) -> dict[str, Any]:
    """Dotted trial paths -> Optuna distributions (OptunaSearch keeps the keys as they are)."""
    import optuna.distributions as d

    def dist(dom: DomainSpec):
        v = dom.value
        return {
            "uniform": lambda: d.FloatDistribution(v[0], v[1]),
            "loguniform": lambda: d.FloatDistribution(v[0], v[1], log=True),
            "int": lambda: d.IntDistribution(v[0], v[1]),
            "logint": lambda: d.IntDistribution(v[0], v[1], log=True),
            "choice": lambda: d.CategoricalDistribution(v),
        }[dom.kind]()

    return {key: dist(dom) for key, dom in search.space.items()}


def sampler(search: SearchSpec, seed: int):
    import warnings

    import optuna.samplers as s
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # QMC and GP are stable enough for us

    return {
        "tpe": lambda: s.TPESampler(seed=seed),  # Optuna 5: multivariate, constant liar
        "gp": lambda: s.GPSampler(seed=seed),
        "cmaes": lambda: s.CmaEsSampler(seed=seed),
        "qmc": lambda: s.QMCSampler(seed=seed, scramble=True, warn_asynchronous_seeding=False),  # even coverage
        "random": lambda: s.RandomSampler(seed=seed),
    }[search.algorithm]()


def grid_space(search: SearchSpec) -> dict[str, Any]:
    """A Tune grid over every grid/choice value, repeated num_samples times."""
    from ray import tune

    space = {key: tune.grid_search(list(dom.value)) for key, dom in search.space.items()}
    space[REPEAT_KEY] = tune.grid_search(list(range(search.num_samples)))
    return space
