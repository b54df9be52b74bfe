"""A finished sweep in Python: its trials, configurations and verdicts as pandas DataFrames, the same
numbers the end table and the report show (computed once, in satune.sweep.verdicts and
satune.sweep.summary), read through MLflow as `mlflow.search_runs` reads runs.

    import satune.api

    sweep = satune.api.load("sweeps/wA.yaml")       # the newest run of a sweep file
    sweep = satune.api.load("sat-wA", tracking_uri="http://mlflow:5000")   # or by name, or parent run id
    sweep.trials()           # one row per trial: values, metrics with n and 95 % interval, repeat, ...
    sweep.configurations()   # one row per configuration: mean, std and n over its repeats
    sweep.verdicts()         # the best configuration against each other: paired over seeds and examples

In local mode (tracking.uri: null) `load` serves the sweep's store for as long as it reads it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satune import tracking
from satune.errors import UserError
from satune.report.fetch import SweepData, find_parent, find_sweep, param_value
from satune.specs import SweepSpec, load_sweep
from satune.sweep.summary import REPEAT_KEY, TrialRow, config_id, configurations, shown_metrics
from satune.sweep.verdicts import Comparison, versus

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Sweep", "load"]

RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Sweep:
    """A finished (or interrupted) sweep as read from MLflow: its trials and verdicts are read when it
    is loaded; `compare` reads the outcome files it needs then, serving a local store again."""

    spec: SweepSpec
    parent_run_id: str
    tracking_uri: str
    data: SweepData
    comparison: Comparison
    serve: Callable[[], AbstractContextManager[str]]  # the tracking server while a block runs (local mode: again)

    @property
    def selection(self) -> str:
        """What chose the best: the metric and the slice (and, when a paper is reproduced, a warning)."""
        return self.comparison.selection

    def trials(self) -> pd.DataFrame:
        """One row per trial: its id and run, status, configuration id and repeat, seed, the searched
        values, whether it belongs to the best configuration, its flags, and every metric it logged
        but the per-class ones (accuracies with their n, _lo and _hi)."""
        import pandas as pd

        keys = [*self.spec.search.grid, *self.spec.search.space]
        best = self.comparison.best.key if self.comparison.best is not None else None
        records = []
        for t in self.data.trials:
            r = t.row
            records.append(
                {
                    "trial": r.trial_id,
                    "run_id": t.run_id,
                    "status": r.status,
                    "config": config_id(r.config),
                    "repeat": int(r.config.get(REPEAT_KEY, 0)),
                    "seed": r.seed,
                    **{k: r.config.get(k) for k in keys},
                    "best": config_id(r.config) == best,
                    "chosen_on": self.selection,
                    "collapsed": r.metrics.get("train/collapsed") == 1,
                    "overfit": r.metrics.get("last/overfit") == 1,
                    **{k: v for k, v in sorted(r.metrics.items()) if "/class_" not in k},
                }
            )
        return pd.DataFrame.from_records(records)

    def configurations(self) -> pd.DataFrame:
        """One row per configuration: its values, trials, and mean, std and n over its repeats of the
        end table's metrics."""
        import pandas as pd

        records = []
        for g in configurations([t.row for t in self.data.trials]):
            stats = {m: s for m in shown_metrics(self.spec) if (s := g.stats(m)) is not None}
            records.append(
                {
                    "config": g.key,
                    **g.config,
                    "trials": [r.trial_id for r in g.rows],
                    "best": self.comparison.best is not None and g.key == self.comparison.best.key,
                    **{
                        f"{m} {part}": v
                        for m, s in stats.items()
                        for part, v in zip(("mean", "std", "n"), s, strict=True)
                    },
                }
            )
        return pd.DataFrame.from_records(records)

    def verdicts(self) -> pd.DataFrame:
        """The best configuration against each other, the closest on the select slice first: the
        paired difference best - other over seeds (mean, 95 % t interval, p), the per-example test
        pooled over the seeds (counts, p) and the verdict. `.attrs` holds the note (e.g. no repeats)
        and what chose the best."""
        import pandas as pd

        c = self.comparison
        rows = [
            {"best": c.best.key if c.best else None, **v.record(), **_prefixed(c.others[v.other].config)}
            for v in c.verdicts
        ]
        frame = pd.DataFrame.from_records(rows)
        frame.attrs = {"note": c.note, "selection": c.selection, "optimistic": c.optimistic}
        return frame

    def compare(
        self, first: dict[str, Any], second: dict[str, Any], metric: str | None = None, pair_by: str = REPEAT_KEY
    ) -> dict[str, Any] | None:
        """Any two configurations, `first - second`, as the verdicts compare the best with the
        others: the trials whose values include `first` (and `second`), paired by `pair_by` (the
        repeat, i.e. the seed; a transfer sweep pairs by its sources' own repeat, e.g.
        `source.repeat`), on `metric` (default: the most trustworthy reported number both have).
        Its verdict reads "first ahead ..." or "first behind ...". None when no pair has it."""
        a, b = self._matching(first, pair_by), self._matching(second, pair_by)
        shared = sorted(set(a) & set(b), key=str)
        metrics = None if metric is None else (metric,)
        with self.serve() as uri:  # outcome files the verdicts did not read yet (a local store's port is new)
            self.data.uri = uri
            found = versus([(a[k], b[k]) for k in shared], self.data.outcomes_of, "", metrics, subject="first")
        return None if found is None else found.record() | {"first": first, "second": second, "pair_by": pair_by}

    def _matching(self, values: dict[str, Any], pair_by: str) -> dict[Any, TrialRow]:
        """The finished trials with these values (a transfer's also by its source's: `source.<key>`),
        by the value they pair by."""
        rows = {}
        for t in self.data.finished:
            source = self.data.sources.get(str(t.row.config.get("method.source")), {})
            config = t.row.config | {f"source.{k}": param_value(v) for k, v in source.items()}
            if all(config.get(k) == v for k, v in values.items()):
                rows[config.get(pair_by, 0)] = t.row
        return rows


def _prefixed(config: dict[str, Any]) -> dict[str, Any]:
    return {f"other.{k}": v for k, v in config.items()}


def load(sweep: str | Path, *, tracking_uri: str | None = None) -> Sweep:
    """The newest run of a sweep: a sweep file (its tracking server, or in local mode its store
    under `storage`), or with `tracking_uri` (default MLFLOW_TRACKING_URI) a sweep's name or its
    parent run's id."""
    path = Path(sweep)
    if path.is_file():
        spec = load_sweep(path)

        @contextmanager
        def serve() -> Iterator[str]:
            with tracking.serving(spec.tracking.uri, spec.storage, f"satune sweep {path}") as (served, _):
                yield served

        with serve() as served:
            return _read(served, serve, lambda: find_sweep(served, spec.name, _quiet))
    given = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if given is None:
        raise UserError(f"'{sweep}' is not a sweep file; for a sweep's name or run id pass tracking_uri")
    uri, name = given, str(sweep)
    tracking.check_reachable(uri)
    find = lambda: find_parent(uri, name, _quiet) if RUN_ID.fullmatch(name) else find_sweep(uri, name, _quiet)  # noqa: E731
    return _read(uri, lambda: nullcontext(uri), find)


def _read(uri: str, serve: Callable[[], AbstractContextManager[str]], find: Callable[[], SweepData]) -> Sweep:
    data = find()
    comparison = data.comparison  # reads the outcomes it needs while the server answers
    return Sweep(data.spec, data.parent_id, uri, data, comparison, serve)


def _quiet(_: str) -> None:
    pass
