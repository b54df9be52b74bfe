"""Searchers around Optuna: a grid of cells each searched by its own study, and replicates of each
configuration with their mean reported. Tune runs them like any searcher, and saves and restores
their whole state with the experiment (--resume).

Why not Ray's `Repeater`: it handles one metric only, tells the inner searcher NaN for a
configuration the scheduler stopped, and loses its groups on restore (it saves the inner searcher
alone), so a resumed sweep could not report the repeats it had started.
"""

from __future__ import annotations

import pickle
import statistics
from typing import Any

from ray.tune.search import Searcher

from satune.sweep.summary import REPEAT_KEY

FINISHED: Any = Searcher.FINISHED  # a string where Tune's annotations promise a dict


class _State(Searcher):
    """Saves and restores everything it holds, inner searchers included, in one file."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # the inner searchers are told final results only


class Cells(_State):
    """The grid's cells in turn, `budget` configurations each; `searchers[i]` searches the space
    within cell i (one Optuna study per cell: one cell's landscape never misleads another's)."""

    def __init__(self, cells: list[dict[str, Any]], searchers: list[Searcher], budget: int, metric, mode):
        super().__init__(metric=metric, mode=mode)
        self.cells, self.searchers, self.budget = cells, searchers, budget
        self.counts = [0] * len(cells)
        self.owner: dict[str, int] = {}
        self.turn = 0

    def suggest(self, trial_id: str) -> dict | None:
        open_cells = [i for i in range(len(self.cells)) if self.counts[i] < self.budget]
        if not open_cells:
            return FINISHED
        i = min(open_cells, key=lambda c: (c - self.turn) % len(self.cells))  # round robin
        config = self.searchers[i].suggest(trial_id)
        if config is None or config == FINISHED:
            return config
        self.counts[i] += 1
        self.owner[trial_id] = i
        self.turn = i + 1
        assert isinstance(config, dict)
        return {**config, **self.cells[i]}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searchers[self.owner[trial_id]].on_trial_complete(trial_id, result, error=error)


class Replicates(_State):
    """Each configuration the inner searcher proposes runs `repeats` times (config[REPEAT_KEY]:
    0, 1, ...; the trial's seed follows it). Once every repeat has ended, the inner searcher is told
    the mean of each metric over the repeats that finished; PRUNED if the scheduler stopped them
    all, FAIL if they all failed."""

    def __init__(self, inner: Searcher, repeats: int, metrics: list[str]):
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self.repeats, self.metrics = inner, repeats, metrics
        self.groups: dict[str, dict[str, Any]] = {}  # primary trial id -> {"config", "results"}
        self.group_of: dict[str, str] = {}
        self.filling: str | None = None  # the group that still has repeats to hand out

    def suggest(self, trial_id: str) -> dict | None:
        if self.filling is None:
            config = self.inner.suggest(trial_id)
            if config is None or config == FINISHED:
                return config
            assert isinstance(config, dict)
            self.groups[trial_id] = {"config": config, "results": {}}
            self.filling = trial_id
        group = self.groups[self.filling]
        repeat = len([t for t, g in self.group_of.items() if g == self.filling])
        self.group_of[trial_id] = self.filling
        if repeat + 1 == self.repeats:
            self.filling = None
        return {**group["config"], REPEAT_KEY: repeat}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        primary = self.group_of[trial_id]
        group = self.groups[primary]
        done = result is not None and all(result.get(m) is not None for m in self.metrics)
        group["results"][trial_id] = (
            {m: result[m] for m in self.metrics} if done and result else ("error" if error else None)
        )
        if len(group["results"]) < self.repeats:
            return
        finished = [r for r in group["results"].values() if isinstance(r, dict)]
        if finished:
            mean = {m: statistics.fmean(r[m] for r in finished) for m in self.metrics}
            self.inner.on_trial_complete(primary, mean)
        else:
            failed = all(r == "error" for r in group["results"].values())
            self.inner.on_trial_complete(primary, None, error=failed)
