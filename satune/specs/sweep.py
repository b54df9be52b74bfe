"""The sweep: a base trial, a search over dotted paths into it, and how to run it (scheduler,
resources, tracking, storage)."""

from __future__ import annotations

import difflib
import itertools
import math
import re
import urllib.parse
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from satune.specs.base import (
    MAX_TRIALS,
    Concurrency,
    ExperimentName,
    FieldProblems,
    Finite,
    Integer,
    Name,
    NonNegativeInt,
    Number,
    PositiveInt,
    Seed,
    Spec,
    check,
    raise_if,
    shown,
)
from satune.specs.names import DOMAIN_KINDS, AlgorithmName, is_final, on_final_slice, on_select_slice
from satune.specs.paths import check_search_key
from satune.specs.trial import AutoAttackSpec, TrialSpec, reported_metrics


class DomainSpec(Spec):
    """One search dimension; exactly one key set. Ranges are inclusive: [low, high]."""

    uniform: tuple[Finite, Finite] | None = None
    loguniform: tuple[Finite, Finite] | None = None
    int_: tuple[Integer, Integer] | None = Field(None, alias="int")  # integers in [low, high]
    logint: tuple[Integer, Integer] | None = None
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _rules(self):
        given = [k for k in self.kinds() if self._get(k) is not None]
        if len(given) != 1:
            raise ValueError(f"must set exactly one of {', '.join(self.kinds())}")
        kind = given[0]
        value = self._get(kind)
        if kind in ("choice", "grid"):
            if not value:
                raise FieldProblems([(kind, "must list at least one value")])
        else:
            low, high = value
            if not low < high:
                raise FieldProblems([(kind, f"needs low < high, got [{low}, {high}]")])
            if kind.startswith("log") and low <= 0:
                raise FieldProblems([(kind, f"needs low > 0 on a log scale, got {low}")])
        return self

    @staticmethod
    def kinds() -> tuple[str, ...]:
        return DOMAIN_KINDS

    def _get(self, kind: str):
        return getattr(self, "int_" if kind == "int" else kind)

    @property
    def kind(self) -> str:
        return next(k for k in self.kinds() if self._get(k) is not None)

    @property
    def value(self):
        return self._get(self.kind)

    def probes(self) -> list[Any]:
        """Values that must all be valid for the targeted field: both ends, or every choice."""
        return list(self.value)


class RunsOf(Spec):
    """A grid axis of sources: every finished trial of the newest run of sweep `runs_of`, found in
    this sweep's tracking store when the sweep starts (as `mlflow:<run id>`)."""

    runs_of: Name


class SearchSpec(Spec):
    algorithm: AlgorithmName = "tpe"
    # What chooses (Optuna's objective, the best configuration, the final stage's winners): a trial's
    # selected checkpoint on the select slice. The final slice only reports, unless select_on: final
    # opts in to reproduce a paper that selected on its test set (its numbers are then optimistic).
    metric: str | list[str] = "proxy/pgd_acc"
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    select_on: Literal["select", "final"] = "select"
    # Configurations per grid cell (algorithm: grid: runs of the whole grid); default 8 for a search,
    # 1 for a grid (nothing to search: each cell is one configuration).
    num_samples: PositiveInt | None = None
    space: dict[str, DomainSpec] = {}
    # Discrete axes: every combination is a cell, and `algorithm` searches `space` within each cell,
    # one Optuna study per cell, `num_samples` configurations each.
    grid: dict[str, Annotated[list[Any], check("a non-empty list of values", bool)] | RunsOf] = {}
    repeats: PositiveInt = 1  # trials per configuration, each with its own seed; the search sees their mean
    # shared: every trial trains with the same seed (per repeat), so trials differ by their values
    # alone; per_config: the seed also depends on the sampled values.
    seeds: Literal["shared", "per_config"] = "shared"

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def samples(self) -> int:
        if self.num_samples is not None:
            return self.num_samples
        return 1 if self.algorithm == "grid" or not self.space else 8

    @property
    def cell_count(self) -> int:
        """len(cells()), without making them (a grid of many axes has more cells than memory holds)."""
        return math.prod(1 if isinstance(axis, RunsOf) else len(axis) for axis in self.grid.values())

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values (one empty cell without a grid). An axis of sources
        (runs_of) counts as one value until the sweep starts and finds them."""
        keys = list(self.grid)
        axes = [[axis] if isinstance(axis, RunsOf) else axis for axis in self.grid.values()]
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes)]

    @property
    def configurations(self) -> int:
        """Distinct configurations: per cell num_samples (algorithm: grid: the whole grid, num_samples times)."""
        n = self.samples * self.cell_count
        if self.algorithm == "grid":
            n *= self._space_grid_size()
        return n

    def _space_grid_size(self) -> int:
        return math.prod(len(dom.value) for dom in self.space.values())

    @property
    def trial_count(self) -> int:
        return self.configurations * self.repeats

    @property
    def modes(self) -> list[str]:
        if isinstance(self.mode, str):
            return [self.mode] * len(self.metrics)
        return list(self.mode)

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        if isinstance(self.mode, list) and len(self.mode) != len(self.metrics):
            problems.append(("mode", f"needs one mode per metric ({len(self.metrics)}), got {len(self.mode)}"))
        if len(set(self.metrics)) != len(self.metrics):
            problems.append(("metric", "must not repeat a metric"))
        for key, dom in self.space.items():
            if self.algorithm == "grid" and dom.kind not in ("grid", "choice"):
                problems.append((f"space.{key}", f"algorithm: grid needs grid or choice values, got {dom.kind}"))
            if self.algorithm != "grid" and dom.kind == "grid":
                problems.append((f"space.{key}", "grid values need algorithm: grid"))
        for key in set(self.grid) & set(self.space):
            problems.append((f"grid.{key}", "is searched in space too; a key is either a grid axis or searched"))
        for key, axis in self.grid.items():
            if isinstance(axis, RunsOf) and key != "method.source":
                problems.append((f"grid.{key}", "runs_of gives transfer sources: only method.source takes it"))
        if self.algorithm == "cmaes" and any(d.kind in ("choice",) for d in self.space.values()):
            problems.append(("algorithm", "cmaes searches numeric ranges only; use tpe for choices"))
        if self.algorithm == "cmaes" and len(self.metrics) > 1:
            problems.append(("algorithm", "cmaes optimises one metric; use tpe, gp, qmc or random for several"))
        if self.trial_count > MAX_TRIALS:
            factors = [f"num_samples {_count(self.samples)}", f"{_count(self.cell_count)} grid cells"]
            if self.algorithm == "grid":
                factors.append(f"{_count(self._space_grid_size())} space values")
            factors.append(f"repeats {_count(self.repeats)}")
            problems.append(
                (
                    "",
                    f"runs {_count(self.trial_count)} trials ({' x '.join(factors)}): must be at most "
                    f"{MAX_TRIALS:,} (a year of one GPU at 5 minutes a trial; more is a typo, not a sweep)",
                )
            )
        raise_if(problems)
        return self


def _count(n: int) -> str:
    """A count for an error line: exact up to 10^15, else its order of magnitude (a product of grid axes
    can have more digits than Python turns into a string)."""
    return f"{n:,}" if n < 10**15 else f"about 10^{int(math.log10(n))}"


class SchedulerSpec(Spec):
    kind: Literal["none", "asha"] = "none"
    metric: str = "select/pgd_acc"  # a per-epoch metric (ASHA compares trials at each rung)
    mode: Literal["max", "min"] = "max"
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[Integer, check(">= 2", lambda v: v >= 2)] = 2


def _ray_quantity(high: int, zero: bool):
    """Ray takes fractions of one unit or whole units; a share below 1 % or a huge count is a typo."""
    rule = f"{'0, ' if zero else ''}a fraction in [0.01, 1] or a whole number up to {high}"
    return check(rule, lambda v: (zero and v == 0) or 0.01 <= v <= 1 or (1 < v <= high and float(v).is_integer()))


class TaskResourcesSpec(Spec):
    cpu: Annotated[Number, _ray_quantity(1024, zero=False)] = 1
    # fractions share a GPU between trials (bookkeeping only: size batches to fit)
    gpu: Annotated[Number, _ray_quantity(64, zero=True)] = 0
    # Ray's label selector: only nodes whose labels match, e.g. {ray.io/accelerator-type: H100}
    label_selector: dict[str, str] = {}

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        for key, value in self.label_selector.items():
            prefix, _, name = key.rpartition("/")
            if not _LABEL.fullmatch(name) or (prefix and not _LABEL_PREFIX.fullmatch(prefix)):
                problems.append(
                    (f"label_selector.{key}", "is not a Ray label key ([prefix/]name, e.g. ray.io/accelerator-type)")
                )
            elif not _LABEL_SELECTOR.fullmatch(value):
                problems.append((f"label_selector.{key}", f"must be value, !value, in(a,b) or !in(a,b), got {value!r}"))
        raise_if(problems)
        return self


# Ray's label syntax (ray._private.label_utils): names of up to 63 characters, DNS-style prefixes.
_NAME = r"[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?"
_LABEL = re.compile(_NAME)
_LABEL_PREFIX = re.compile(rf"(?=.{{1,253}}$){_NAME}(?:\.{_NAME})*")
_LABEL_SELECTOR = re.compile(rf"!?(?:in)?\({_NAME}(?:, ?{_NAME})*\)|!?{_NAME}")


class ResourcesSpec(TaskResourcesSpec):
    max_concurrent: Concurrency = 2
    # one actor runs trial after trial (Tune's reuse_actors): no process start and imports per trial
    reuse_actors: bool = True


class FinalAutoAttackSpec(AutoAttackSpec):
    n: NonNegativeInt | Literal["all"] = "all"  # the whole final slice, as the papers report


class FinalEvalSpec(Spec):
    """Two-stage evaluation: when the search ends, AutoAttack on its winners over the final slice,
    each a Ray task of its own, logged into the winner's own MLflow run."""

    top_k: PositiveInt | Literal["pareto"] = 3  # best by the search's (first) metric, or its Pareto front
    autoattack: FinalAutoAttackSpec = FinalAutoAttackSpec()
    resources: TaskResourcesSpec = TaskResourcesSpec()

    @model_validator(mode="after")
    def _rules(self):
        if self.autoattack.n == 0:
            raise FieldProblems([("autoattack.n", "must evaluate at least one example (all: the final slice)")])
        return self


class TrackingSpec(Spec):
    uri: str | None = None  # None: satune starts a local MLflow server on SQLite under storage
    experiment: ExperimentName | None = None  # default: the sweep's name
    # How long the sweep waits for a tracking server that stopped answering (a restart by its operator,
    # or satune's own) before it stops, resumably: trials' requests wait with it.
    patience_s: Finite = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _rules(self):
        if self.uri is None:
            return self
        if not re.match(r"https?://", self.uri):
            raise FieldProblems([("uri", f"must be an http(s):// MLflow server, got {shown(self.uri)}")])
        url = urllib.parse.urlsplit(self.uri)
        if "@" in url.netloc or url.query or url.fragment:
            # Never echoed: the value may hold a password. MLflow reads credentials from its own variables.
            raise FieldProblems(
                [
                    (
                        "uri",
                        "must not hold credentials or a query (user:password@, ?token=): set "
                        "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN",
                    )
                ]
            )
        return self


STORAGE_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://")  # `storage` as an object store's URL, not a path


class SweepSpec(Spec):
    name: Name
    seed: Seed = 0
    trial: TrialSpec
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()
    storage: str = "runs"  # Ray results, Optuna journal, MLflow store (local mode): a path (absolute after
    # loading) or an object store's URL (satune.sweep.store)
    # How long the sweep waits for an object store (`storage` as a URL) that stopped answering before
    # it stops, resumably; trials' requests to it wait meanwhile.
    storage_patience_s: Finite = Field(default=120.0, gt=0)
    max_failures: NonNegativeInt = 2  # retries of a failing trial, from its last checkpoint
    final_eval: FinalEvalSpec | None = None  # AutoAttack on the winners after the search

    @model_validator(mode="before")
    @classmethod
    def _seed_flows_into_trial(cls, data: Any):
        # The sweep seed is the base trial's seed unless the trial sets its own.
        if isinstance(data, dict) and isinstance(data.get("trial"), dict) and "seed" not in data["trial"]:
            seed = data.get("seed", 0)
            # (else `seed` itself is reported, once; true is no seed)
            if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32:
                data = {**data, "trial": {**data["trial"], "seed": seed}}
        return data

    @model_validator(mode="after")
    def _rules(self):
        problems = []
        url = STORAGE_URL.match(self.storage)
        if url and url.group(1).lower() in ("file", "local", "memory"):
            problems.append(
                (
                    "storage",
                    f"{self.storage!r} is not shared by Ray's nodes: write a path every node "
                    "mounts (NFS, a shared volume), or an object store's URL (s3://bucket/prefix)",
                )
            )
        elif url and self.tracking.uri is None:
            problems.append(
                (
                    "storage",
                    f"{self.storage!r} cannot hold the local MLflow server's SQLite store: set "
                    "tracking.uri to an MLflow server (docs/cluster.md)",
                )
            )
        base = self.trial.model_dump(exclude_unset=True)
        for key, dom in self.search.space.items():
            problems += [(f"search.space.{key}", msg) for msg in check_search_key(base, key, dom)]
        for key, values in self.search.grid.items():
            if isinstance(values, RunsOf):  # sources found when the sweep starts; their form is checked then
                continue
            axis = DomainSpec.model_validate({"grid": values})
            problems += [(f"search.grid.{key}", msg) for msg in check_search_key(base, key, axis)]
        known = reported_metrics(self.trial)
        final = {m for m in known if is_final(m)}
        for i, metric in enumerate(self.search.metrics):
            where = "search.metric" if isinstance(self.search.metric, str) else f"search.metric[{i}]"
            if metric in known - final:
                problems.append(
                    (
                        where,
                        f"'{metric}' is reported every epoch; the search is told a trial's final "
                        "numbers (proxy/pgd_acc: its selected checkpoint on the select slice)",
                    )
                )
            elif metric not in known:
                problems.append((where, _unknown_metric(metric, final, "final ")))
            elif on_final_slice(metric) and self.search.select_on == "select":
                instead = on_select_slice(metric)
                problems.append(
                    (
                        where,
                        f"'{metric}' is on the final slice, which reports, never chooses: rank on "
                        f"{instead if instead in known else 'proxy/*'} (select slice), or set "
                        "search.select_on: final to copy a paper that chose on its test set",
                    )
                )
        if self.final_eval is not None and self.final_eval.top_k == "pareto" and len(self.search.metrics) < 2:
            problems.append(("final_eval.top_k", "pareto needs a search over several metrics"))
        per_epoch = known - final
        if self.scheduler.kind != "none" and self.scheduler.metric not in per_epoch:
            problems.append(("scheduler.metric", _unknown_metric(self.scheduler.metric, per_epoch, "per-epoch ")))
        raise_if(problems)
        return self


def _unknown_metric(metric: str, known: set[str], what: str = "") -> str:
    close = difflib.get_close_matches(metric, sorted(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"'{metric}' is not a {what}metric this sweep reports{hint}"
