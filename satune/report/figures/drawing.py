"""What every figure draws with: the `Drawn` record it returns, a figure that names its sweep,
the colours, accuracies in percent with their intervals, and the axes' labels and grid."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from satune.report.fetch import SweepData
from satune.report.formats import started
from satune.specs import interval_keys

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


@dataclass
class Drawn:
    name: str  # file stem: <name>.png and <name>.csv
    title: str
    caption: str  # what it shows and how to read it
    figure: Figure
    table: list[dict[str, Any]]  # the numbers behind it, one dict per CSV row


def color(i: int) -> str:
    """The i-th line's colour, the palette repeating past its end."""
    return COLORS[i % len(COLORS)]


def new_figure(data: SweepData, panels: int, title: str, width: float = 5.2, height: float = 4.0) -> Figure:
    """A figure that says which sweep it belongs to, also when seen alone (in MLflow's artifacts)."""
    # constrained layout, leaving room below for the provenance line
    fig = Figure(figsize=(width * panels, height + 0.7), layout=ConstrainedLayoutEngine(rect=(0, 0.035, 1, 0.965)))
    fig.suptitle(title, fontsize=12)
    sha = data.tags.get("git.sha", "unknown")[:10]
    fig.text(
        0.995,
        0.003,
        f"{data.parent_name} · {started(data.started)} · git {sha}",
        ha="right",
        va="bottom",
        fontsize=7,
        color="#666",
    )
    return fig


def finish_axes(ax: Axes, xlabel: str, ylabel: str, **legend: Any) -> None:
    """The labels, a light grid and a small legend (`legend` adds to its options)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, **legend)


def label(key: str) -> str:
    """An axis label for a metric, with its unit."""
    units = {"train/grad_evals": "input-gradient evaluations (examples × steps)", "time/total_s": "seconds"}
    if key in units:
        return f"{key} [{units[key]}]"
    if key.endswith("_acc"):
        return f"{key} [% of the slice]"
    return key


def pct(v: float | None) -> float:
    """An accuracy (a share) in percent, as the figures draw it; NaN where there is none."""
    return math.nan if v is None else 100 * v


def interval(metrics: dict[str, float], key: str) -> tuple[float, float]:
    """The 95 % interval of `key` as distances below and above it, in percent (0 where none was logged)."""
    _, lo, hi = interval_keys(key)
    if lo not in metrics or hi not in metrics:
        return 0.0, 0.0
    return pct(metrics[key] - metrics[lo]), pct(metrics[hi] - metrics[key])


def bounds(metrics: dict[str, float], key: str) -> dict[str, float | None]:
    """The sample size and the 95 % interval of `key`, as logged: the CSV's columns."""
    n, lo, hi = interval_keys(key)
    return {"n": metrics.get(n), "lo95": metrics.get(lo), "hi95": metrics.get(hi)}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def log_axis(values: list[float]) -> bool:
    """Whether values spread over a decade or more, all positive: drawn on a log axis."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) >= 10
