"""search.space -> what Tune and Optuna take: Optuna distributions and samplers, or a Tune grid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from satune.specs import SearchSpec
from satune.sweep.summary import REPEAT_KEY


def _distributions() -> dict[str, Callable[[Any], Any]]:
    """Domain kind -> its Optuna distribution (a grid is Tune's, not Optuna's: grid_space)."""
    import optuna.distributions as d

    return {
        "uniform": lambda v: d.FloatDistribution(v[0], v[1]),
        "loguniform": lambda v: d.FloatDistribution(v[0], v[1], log=True),
        "int": lambda v: d.IntDistribution(v[0], v[1]),
        "logint": lambda v: d.IntDistribution(v[0], v[1], log=True),
        "choice": lambda v: d.CategoricalDistribution(v),
    }


def _samplers() -> dict[str, Callable[[int], Any]]:
    """search.algorithm -> its seeded Optuna sampler (grid is Tune's grid, without Optuna)."""
    import warnings

    import optuna.samplers as s
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # QMC and GP are stable enough for us
    return {
        "tpe": lambda seed: s.TPESampler(seed=seed),  # Optuna 5: multivariate, constant liar
        "gp": lambda seed: s.GPSampler(seed=seed),
        "cmaes": lambda seed: s.CmaEsSampler(seed=seed),
        "qmc": lambda seed: s.QMCSampler(seed=seed, scramble=True, warn_asynchronous_seeding=False),  # even coverage
        "random": lambda seed: s.RandomSampler(seed=seed),
    }


def optuna_space(search: SearchSpec) -> dict[str, Any]:
    """Dotted trial paths -> Optuna distributions (OptunaSearch keeps the keys as they are)."""
    dists = _distributions()
    return {key: dists[dom.kind](dom.value) for key, dom in search.space.items()}


def sampler(search: SearchSpec, seed: int) -> Any:
    return _samplers()[search.algorithm](seed)


def grid_space(search: SearchSpec) -> dict[str, Any]:
    """A Tune grid over every value of the grid axes (and of grid/choice values in space), each
    configuration num_samples x repeats times, one seed each."""
    from ray import tune

    space = {key: tune.grid_search(list(dom.value)) for key, dom in search.space.items()}
    space |= {key: tune.grid_search(list(values)) for key, values in search.grid.items()}  # (sources: found)
    space[REPEAT_KEY] = tune.grid_search(list(range(search.samples * search.repeats)))
    return space


def cell_label(cell: dict[str, Any]) -> str:
    """A cell's name, as its Optuna study is named after it: `method.fraction=0.3,method.ranking=random`."""
    return ",".join(f"{k}={v}" for k, v in cell.items())
