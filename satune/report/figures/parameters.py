"""Accuracy against each searched parameter: clean on the left, robust on the right, one point per
trial with its 95 % interval, and the mean over seeds where configurations were repeated. Past MANY
trials the intervals would be ink: the points are a light cloud, and along a numeric axis a binned
median with its interquartile band shows the trend."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from satune.report.fetch import SweepData, Trial
from satune.report.figures.drawing import Drawn, bounds, color, interval, log_axis, new_figure, pct
from satune.report.figures.trials import CLEAN, ROBUST, is_number, robust_metrics, searched_keys

MANY = 60  # trials past which a point's own interval is no longer readable
BINS = 12  # equal-count bins of the binned median


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
    if len(data.finished) > MANY:
        caption = (
            f"Each point is one of {len(data.finished)} trials on the final slice (their 95 % intervals are "
            f"in the CSV); along a numeric axis, the line is the median of {BINS} bins of equal count and "
            "the band their interquartile range. (The search chose on the select slice: these only report.)"
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
    xs, ys = [x for x, _ in pts], [pct(t.row.metrics[m]) for _, t in pts]
    if len(pts) > MANY:
        ax.scatter(xs, ys, s=6, marker=marker, color=color(i), alpha=0.3, linewidths=0, label=f"{name}: trial")
        if numeric:
            _binned(ax, xs, ys, color(i), name)
    else:
        err = list(zip(*(interval(t.row.metrics, m) for _, t in pts), strict=True))
        ax.errorbar(
            xs, ys, yerr=err, fmt=marker, color=color(i), alpha=0.8, capsize=3, label=f"{name}: trial, 95 % interval"
        )
    means = _means_by_x(pts, m)
    if len(means) < len(pts) and (len(pts) <= MANY or not numeric):  # repeats: the mean over seeds
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


def _binned(ax: Axes, xs: list[float], ys: list[float], c: Any, name: str) -> None:
    """The median of y in BINS bins of equal count along x, and the interquartile band around it."""
    order = np.argsort(xs)
    bins = [b for b in np.array_split(order, BINS) if len(b)]
    x = [float(np.median(np.asarray(xs)[b])) for b in bins]
    q1, med, q3 = (np.array([np.percentile(np.asarray(ys)[b], q) for b in bins]) for q in (25, 50, 75))
    ax.fill_between(x, q1, q3, color=c, alpha=0.2, linewidth=0)
    ax.plot(x, med, "-", color=c, lw=2, label=f"{name}: binned median, interquartile band")


def _means_by_x(pts: list[tuple[float, Trial]], metric: str) -> dict[float, float]:
    by_x: dict[float, list[float]] = {}
    for x, t in pts:
        by_x.setdefault(x, []).append(t.row.metrics[metric])
    return {x: statistics.fmean(v) for x, v in sorted(by_x.items())}


def _stem(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)
