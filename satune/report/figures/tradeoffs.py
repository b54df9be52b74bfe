"""Trade-offs: the Pareto front of robust against clean accuracy, and against the training cost
where costs differ. The sweep's best trial is labelled."""

from __future__ import annotations

from typing import Any

from matplotlib.axes import Axes

from satune.report.fetch import SweepData, Trial
from satune.report.figures.drawing import Drawn, color, finish_axes, label, new_figure, pct
from satune.report.figures.trials import CLEAN, best_trial, headline
from satune.sweep.summary import OPTIMISTIC, pareto_front


def pareto(data: SweepData) -> list[Drawn]:
    """Trade-offs, where a front is a choice: on the select slice (the final slice only reports),
    unless the sweep opted in to choose on the final one."""
    robust, clean = ("proxy/pgd_acc", "proxy/clean_acc")
    if data.optimistic or not all(robust in t.row.metrics and clean in t.row.metrics for t in data.finished):
        robust, clean = headline(data), CLEAN
    trials = [t for t in data.finished if robust in t.row.metrics and clean in t.row.metrics]
    if len(trials) < 2:
        return []
    best = best_trial(data)
    panels = [(clean, "max")]
    if len({t.row.metrics.get("train/grad_evals") for t in trials}) > 1:  # a cost axis only where costs differ
        panels.append(("train/grad_evals", "min"))
    fig = new_figure(data, len(panels), "trade-offs: the Pareto front" + ("s" if len(panels) > 1 else ""))
    table = []
    for i, (other, mode) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        table += _panel(ax, [t for t in trials if other in t.row.metrics], robust, other, mode, best)
    caption = (
        f"{robust} against clean accuracy (both higher is better; "
        f"{'the final slice: ' + OPTIMISTIC if data.optimistic else 'the select slice, which chooses'})"
        + (" and against the training cost (lower is better)" if len(panels) > 1 else "")
        + ". The sweep's best trial (the one its summary names) is labelled."
    )
    return [Drawn("pareto", "Pareto fronts", caption, fig, table)]


def _panel(ax: Axes, have: list[Trial], robust: str, other: str, mode: str, best: str | None) -> list[dict[str, Any]]:
    """`robust` against `other` (better when `mode`), the front drawn through; the rows behind it."""
    front = {r.trial_id for r in pareto_front([t.row for t in have], [robust, other], ["max", mode])}
    scale = pct if other.endswith("_acc") else float
    xs = [scale(t.row.metrics[other]) for t in have]
    ys = [pct(t.row.metrics[robust]) for t in have]
    ax.scatter(xs, ys, color="#999", s=18, label="trial")
    on = sorted((x, y) for x, y, t in zip(xs, ys, have, strict=True) if t.row.trial_id in front)
    ax.plot([x for x, _ in on], [y for _, y in on], "o-", color=color(1), label="Pareto front")
    table = []
    for x, y, t in zip(xs, ys, have, strict=True):
        if t.row.trial_id == best or (t.row.trial_id in front and len(front) <= 6):
            ax.annotate(
                t.row.trial_id + (" (best)" if t.row.trial_id == best else ""),
                (x, y),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        table.append(
            {
                "panel": f"{robust} vs {other}",
                "trial": t.row.trial_id,
                robust: t.row.metrics[robust],
                other: t.row.metrics[other],
                "pareto": t.row.trial_id in front,
            }
        )
    finish_axes(ax, label(other), label(robust))
    return table
