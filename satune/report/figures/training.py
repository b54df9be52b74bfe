"""Training dynamics of the best trials: their learning curves on the selection slice, and
BiaMAT's confidence gate over the epochs."""

from __future__ import annotations

from typing import Any

from matplotlib.axes import Axes

from satune.report.fetch import SweepData, Trial
from satune.report.figures.drawing import Drawn, color, finish_axes, label, new_figure, pct
from satune.report.figures.trials import ranked


def biamat_gate(data: SweepData) -> list[Drawn]:
    """BiaMAT's confidence gate over the epochs: the share of auxiliary images it let through (Hi),
    per auxiliary source, and its threshold ω."""
    trials = [t for t in ranked(data)[:4] if any(k.startswith("biamat/hi_ratio") for k in t.row.metrics)]
    if not trials:
        return []
    has_omega = any("biamat/omega" in t.row.metrics for t in trials)
    fig = new_figure(data, 2 if has_omega else 1, "BiaMAT's confidence gate over training")
    ax = fig.add_subplot(1, 2 if has_omega else 1, 1)
    table = []
    for i, t in enumerate(trials):
        keys = sorted(k for k in t.row.metrics if k.startswith("biamat/hi_ratio/")) or ["biamat/hi_ratio"]
        for j, key in enumerate(keys):
            h = data.history(t, key)
            source = key.removeprefix("biamat/hi_ratio").strip("/") or "all"
            ax.plot(
                [s + 1 for s, _ in h],
                [100 * v for _, v in h],
                ["-", "--", ":", "-."][j % 4],
                color=color(i),
                label=f"{t.row.trial_id}: {source}",
            )
            table += _epochs(t, key, h)
    finish_axes(ax, "epoch", "Hi ratio [% of auxiliary images above ω]")
    if has_omega:
        ax2 = fig.add_subplot(1, 2, 2)
        for i, t in enumerate(trials):
            h = data.history(t, "biamat/omega")
            ax2.plot([s + 1 for s, _ in h], [v for _, v in h], "o-", color=color(i), label=t.row.trial_id)
            table += _epochs(t, "biamat/omega", h)
        finish_axes(ax2, "epoch", "ω (confidence threshold, π × mean primary confidence)")
    return [Drawn("biamat_gate", "BiaMAT's gate", "The best trials by the search's objective.", fig, table)]


SELECT = ("select/clean_acc", "select/pgd_acc")  # the learning curves' panels


def learning_curves(data: SweepData) -> list[Drawn]:
    """The best trials' selection-slice accuracy per epoch; the selected epoch marked, the last
    epoch's final-slice PGD beside the selected one's."""
    trials = [t for t in ranked(data)[:3] if data.history(t, "select/pgd_acc")]
    if not trials:
        return []
    fig = new_figure(data, 2, "learning curves of the best trials (selection slice)")
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    table = []
    for i, t in enumerate(trials):
        for ax, key in zip(axes, SELECT, strict=True):
            h = data.history(t, key)
            ax.plot([s + 1 for s, _ in h], [pct(v) for _, v in h], "o-", ms=3, color=color(i), label=t.row.trial_id)
            table += _epochs(t, key, h)
        table.append(_selected_vs_last(axes, i, t))
    for ax, key in zip(axes, SELECT, strict=True):
        finish_axes(ax, "epoch (dotted: the selected checkpoint)", label(key))
    caption = "Selection-slice accuracy per epoch; the dotted line is the epoch whose checkpoint was kept."
    return [Drawn("learning_curves", "Learning curves", caption, fig, table)]


def _selected_vs_last(axes: list[Axes], i: int, t: Trial) -> dict[str, Any]:
    """The selected epoch marked on both panels, and the final slice's PGD of the selected checkpoint
    against the last one's, written on the robust panel; the row behind it."""
    selected = t.row.metrics.get("train/selected_epoch")
    if selected is not None:
        for ax in axes:
            ax.axvline(selected + 1, color=color(i), ls=":", alpha=0.8)
    last, chosen = t.row.metrics.get("last/pgd_acc"), t.row.metrics.get("eval/pgd_acc")
    if last is not None and chosen is not None:
        axes[1].annotate(
            f"{t.row.trial_id}: final slice PGD {pct(chosen):.1f} % selected, {pct(last):.1f} % last",
            (0.02, 0.04 + 0.07 * i),
            xycoords="axes fraction",
            fontsize=7,
            color=color(i),
        )
    return {
        "trial": t.row.trial_id,
        "metric": "final slice PGD: selected vs last epoch",
        "epoch": None if selected is None else selected + 1,
        "value": chosen,
        "last": last,
    }


def _epochs(t: Trial, key: str, history: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """A metric's history as CSV rows, epochs counted from 1."""
    return [{"trial": t.row.trial_id, "metric": key, "epoch": s + 1, "value": v} for s, v in history]
