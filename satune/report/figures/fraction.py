"""Accuracy against the attacked fraction (the shape of SAT's Fig. 3-5): one line per setting of the
other grid parameters, the mean over seeds with a band of ± one standard deviation."""

from __future__ import annotations

from typing import Any

from matplotlib.axes import Axes

from satune.report.fetch import SweepData, Trial
from satune.report.figures.drawing import Drawn, color, finish_axes, label, mean_std, new_figure, pct
from satune.report.figures.trials import CLEAN, ROBUST, headline, is_number, searched_keys


def fraction_curves(data: SweepData) -> list[Drawn]:
    if "method.fraction" not in searched_keys(data):
        return []
    finished = [t for t in data.finished if is_number(t.row.config.get("method.fraction"))]
    if len({t.row.config["method.fraction"] for t in finished}) < 2:
        return []
    others = [k for k in data.spec.search.grid if k not in ("method.fraction", "method.source")]
    groups: dict[str, list[Trial]] = {}
    for t in finished:
        groups.setdefault(", ".join(f"{k.split('.')[-1]}={t.row.config.get(k)}" for k in others) or "all", []).append(t)
    fig = new_figure(data, 2, "accuracy against the attacked fraction (mean ± std over seeds)")
    table = []
    for ax, metric in ((fig.add_subplot(1, 2, 1), CLEAN), (fig.add_subplot(1, 2, 2), headline(data))):
        for i, (name, members) in enumerate(sorted(groups.items())):
            table += _line(ax, i, name, members, metric)
        ax.set_title(ROBUST.get(metric, ("clean",))[0], fontsize=10)
        finish_axes(ax, "attacked fraction f (method.fraction)", label(metric))
    caption = (
        f"One line per {', '.join(others) or 'sweep'}; the band is ± one standard deviation over the "
        f"seeds of each point (n in the CSV)."
    )
    return [Drawn("fraction_curves", "Accuracy against the attacked fraction", caption, fig, table)]


def _line(ax: Axes, i: int, name: str, members: list[Trial], metric: str) -> list[dict[str, Any]]:
    """One group's mean and spread of `metric` per fraction; the rows behind it."""
    by_f: dict[float, list[float]] = {}
    for t in members:
        if metric in t.row.metrics:
            by_f.setdefault(float(t.row.config["method.fraction"]), []).append(t.row.metrics[metric])
    if not by_f:
        return []
    xs = sorted(by_f)
    stats = [mean_std(by_f[x]) for x in xs]
    means, stds = [pct(m) for m, _ in stats], [pct(s) for _, s in stats]
    ax.plot(xs, means, "o-", color=color(i), label=name)
    ax.fill_between(
        xs,
        [m - s for m, s in zip(means, stds, strict=True)],
        [m + s for m, s in zip(means, stds, strict=True)],
        color=color(i),
        alpha=0.15,
    )
    return [
        {"group": name, "fraction": x, "metric": metric, "mean": st[0], "std": st[1], "n": len(by_f[x])}
        for x, st in zip(xs, stats, strict=True)
    ]
