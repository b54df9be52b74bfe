"""Optuna's view of the search, read from the sweep's journal: its optimisation history and, where
it can compute them, its parameter importances (fANOVA). One study per grid cell."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from matplotlib.ticker import MaxNLocator

from satune.report.fetch import SweepData
from satune.report.figures.drawing import Drawn, color, finish_axes, label, new_figure, pct


def _studies(data: SweepData) -> list:
    if data.journal is None:
        return []
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(data.journal)))
    return [
        optuna.load_study(study_name=s.study_name, storage=storage) for s in optuna.get_all_study_summaries(storage)
    ]


def _complete(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def optuna_history(data: SweepData) -> list[Drawn]:
    studies = [s for s in _studies(data) if len(_complete(s)) >= 2]
    if not studies:
        return []
    metric, mode = data.spec.search.metrics[0], data.spec.search.modes[0]
    fig = new_figure(data, 1, f"Optuna's optimisation history ({metric}, {mode})", width=7.0)
    ax = fig.add_subplot(1, 1, 1)
    table = []
    for i, study in enumerate(studies):
        done = _complete(study)
        values = [t.values[0] for t in done]
        best = list(_running_best(values, mode))
        name = study.study_name if len(studies) > 1 else "trial"
        ax.plot([t.number for t in done], [pct(v) for v in values], "o", color=color(i), alpha=0.6, label=name)
        ax.step(
            [t.number for t in done],
            [pct(v) for v in best],
            where="post",
            color=color(i),
            alpha=0.9,
            label=f"best so far{'' if len(studies) == 1 else f' ({name})'}",
        )
        table += [
            {"study": study.study_name, "number": t.number, metric: v, "best_so_far": b, **t.params}
            for t, v, b in zip(done, values, best, strict=True)
        ]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    finish_axes(ax, "Optuna trial number (order of proposal)", label(metric), ncol=2 if len(studies) > 3 else 1)
    caption = (
        "The value Optuna was told for each configuration it proposed (the mean over repeats), one study per grid cell."
    )
    return [Drawn("optuna_history", "Optimisation history", caption, fig, table)]


def _running_best(values: list[float], mode: str) -> Iterable[float]:
    best = None
    for v in values:
        best = v if best is None or (v > best if mode == "max" else v < best) else best
        yield best


def optuna_importances(data: SweepData) -> list[Drawn]:
    """fANOVA importances where Optuna can compute them: two or more searched parameters, enough trials."""
    if len(data.spec.search.space) < 2:
        return []
    rows = _importances(data)
    if not rows:
        return []
    names = sorted({r["parameter"] for r in rows})
    studies = sorted({r["study"] for r in rows})
    fig = new_figure(
        data,
        1,
        f"parameter importances for {data.spec.search.metrics[0]} (Optuna, fANOVA)",
        width=7.0,
        height=1.2 + 0.5 * len(names),
    )
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / len(studies)
    for i, s in enumerate(studies):
        values = {r["parameter"]: r["importance"] for r in rows if r["study"] == s}
        ax.barh(
            [k + i * height for k in range(len(names))],
            [values.get(n, 0.0) for n in names],
            height=height,
            color=color(i),
            label=s if len(studies) > 1 else None,
        )
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(names))], names)
    ax.set_xlabel("importance (share of the objective's variance)")
    if len(studies) > 1:
        ax.legend(fontsize=7)
    caption = "How much of the objective's variance each searched parameter explains."
    return [Drawn("optuna_importances", "Parameter importances", caption, fig, rows)]


def _importances(data: SweepData) -> list[dict[str, Any]]:
    """Each study's importance of each parameter, for the studies with enough complete trials."""
    import optuna

    rows = []
    for study in _studies(data):
        if len(_complete(study)) < 4:
            continue
        try:
            importances = optuna.importance.get_param_importances(study, target=lambda t: t.values[0])
        except (RuntimeError, ValueError):
            continue  # Optuna cannot tell (e.g. a parameter that never varied)
        rows += [{"study": study.study_name, "parameter": k, "importance": v} for k, v in importances.items()]
    return rows
