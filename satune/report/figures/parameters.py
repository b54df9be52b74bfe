"""Accuracy against each searched parameter: clean on the left, robust on the right, one point per
trial with its 95 % interval, and the mean over seeds where configurations were repeated."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from matplotlib.axes import Axes

from satune.report.fetch import SweepData, Trial
from satune.report.figures.drawing import Drawn, bounds, color, interval, log_axis, new_figure, pct
from satune.report.figures.trials import CLEAN, ROBUST, is_number, robust_metrics, searched_keys


def objective_vs_parameters(data: SweepData) -> list[Drawn]:
    out = []
    robust = robust_metrics(data.finished)
    for key in searched_keys(data):
        values = [t.row.config.get(key) for t in data.finished]
        if key in ("method.source", "method.classes") or len({str(v) for v in values}) < 2:
            continue  # a source or a class set has figures of its own; one value is no axis
        out.append(_against(data, key, values, robust))
    return out


def _against(data: SweepData, key: str, values: list[Any], robust: list[str]) -> Drawn:
    """One figure: the clean and the robust metrics against the parameter `key`."""
    numeric = all(is_number(v) for v in values)
    categories = sorted({str(v) for v in values})
    fig = new_figure(data, 2, f"clean and robust accuracy against {key}")
    table = []
    for ax, metrics, what in (
        (fig.add_subplot(1, 2, 1), [CLEAN], "clean"),
        (fig.add_subplot(1, 2, 2), robust, "robust"),
    ):
        for i, m in enumerate(metrics):
            shift = 0.0 if numeric else 0.12 * (i - (len(metrics) - 1) / 2)  # side by side, not on top
            table += _metric(ax, data.finished, key, m, i, _position(numeric, categories, shift), numeric)
        ax.set_xlabel(key)
        ax.set_ylabel(f"{what} accuracy [% of the final slice]")
        ax.grid(alpha=0.3)
        if numeric and log_axis([float(v) for v in values if v is not None]):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=20)
        if ax.has_data():
            ax.legend(fontsize=7)
    caption = (
        "Each point is one trial on the final slice, with its 95 % Wilson interval; markers tell "
        "PGD from AutoAttack. (The search chose on the select slice, proxy/*: these only report.)"
    )
    return Drawn(f"objective_vs_{_stem(key)}", f"Accuracy against {key}", caption, fig, table)


def _position(numeric: bool, categories: list[str], shift: float) -> Callable[[Any], float]:
    """Where a parameter's value sits along x: the value itself, or its category's index moved by `shift`."""
    if numeric:
        return float
    return lambda v: categories.index(str(v)) + shift


def _metric(
    ax: Axes, finished: list[Trial], key: str, m: str, i: int, position: Callable[[Any], float], numeric: bool
) -> list[dict[str, Any]]:
    """Metric `m` of every trial that has it, at the position of its value of `key`; the rows behind the points."""
    pts = [(position(t.row.config[key]), t) for t in finished if m in t.row.metrics and key in t.row.config]
    if not pts:
        return []
    name, marker = ROBUST.get(m, ("clean", "o"))
    err = list(zip(*(interval(t.row.metrics, m) for _, t in pts), strict=True))
    ax.errorbar(
        [x for x, _ in pts],
        [pct(t.row.metrics[m]) for _, t in pts],
        yerr=err,
        fmt=marker,
        color=color(i),
        alpha=0.8,
        capsize=3,
        label=f"{name}: trial, 95 % interval",
    )
    means = _means_by_x(pts, m)
    if len(means) < len(pts):  # repeats: the mean over seeds (a line only along a numeric axis)
        ax.plot(
            list(means),
            [pct(v) for v in means.values()],
            "-" if numeric else "_",
            ms=22,
            mew=2,
            color=color(i),
            alpha=0.7,
            label=f"{name}: mean over seeds",
        )
    return [
        {
            "trial": t.row.trial_id,
            key: t.row.config[key],
            "metric": m,
            "value": t.row.metrics[m],
            **bounds(t.row.metrics, m),
        }
        for _, t in pts
    ]


def _means_by_x(pts: list[tuple[float, Trial]], metric: str) -> dict[float, float]:
    by_x: dict[float, list[float]] = {}
    for x, t in pts:
        by_x.setdefault(x, []).append(t.row.metrics[metric])
    return {x: statistics.fmean(v) for x, v in sorted(by_x.items())}


def _stem(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)
