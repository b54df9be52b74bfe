"""Is the best configuration's lead larger than noise? The best against each other configuration on
the reported number: the difference per seed, its mean and 95 % t interval, and each test's verdict
(satune.sweep.verdicts: the same numbers as the end table and the API)."""

from __future__ import annotations

from typing import Any

from matplotlib.axes import Axes

from satune.report.fetch import SweepData
from satune.report.figures.drawing import COLORS, Drawn, new_figure, pct
from satune.report.figures.trials import searched_keys
from satune.report.formats import capitalised
from satune.sweep.shown import shown
from satune.sweep.verdicts import Comparison, Verdict

MAX_VERDICTS = 12  # runners-up drawn; a larger sweep's are in the CSV


def paired_comparison(data: SweepData) -> list[Drawn]:
    """The best configuration (chosen on the select slice) against each other on the reported
    number: the difference per seed, its mean and 95 % t interval, and what each test says
    (satune.sweep.verdicts, the same numbers as the end table and the API)."""
    comparison = data.comparison
    shown = comparison.verdicts[:MAX_VERDICTS]
    if comparison.best is None or not shown:
        return []
    keys = searched_keys(data)
    name = lambda key: configuration_label(comparison.others[key].config, keys) or key  # noqa: E731
    best = configuration_label(comparison.best.config, keys) or comparison.best.key
    fig = new_figure(
        data,
        1,
        f"the best configuration ({best}) against the others: best - other",
        width=8.5,
        height=1.6 + 0.55 * len(shown),
    )
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(shown)))[::-1]  # the closest runner-up on top
    seeds = any(v.seeds is not None for v in shown)
    for y, v in zip(ys, shown, strict=True):
        _verdict(ax, y, v, first=y == ys[0], seeds=seeds)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys, [name(v.other) for v in shown])
    ax.set_ylim(-0.7, len(shown) - 0.3)
    metrics = sorted({v.metric for v in shown})
    ax.set_xlabel(f"{' / '.join(metrics)}: best - other [points, % of the final slice]")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    table = [v.record() | {"best": comparison.best.key, "other_label": name(v.other)} for v in comparison.verdicts]
    caption = _caption(comparison, len(shown))
    return [Drawn("paired_comparison", "Is the best configuration better, or within noise?", caption, fig, table)]


def _verdict(ax: Axes, y: int, v: Verdict, first: bool, seeds: bool) -> None:
    """One row: the per-seed differences, their mean with its interval, and the tests' verdict;
    coloured by what supports it (red: beyond seed noise, orange: these examples only, grey: neither)."""
    color = {"seeds": COLORS[1], "examples": COLORS[4]}.get(v.supported_by or "", "#777")
    ax.scatter(
        [pct(d) for d in v.differences],
        [y] * len(v.differences),
        s=14,
        color=color,
        alpha=0.45,
        label="one seed (repeat)" if first else None,
    )
    err = [[pct(v.mean - v.seeds.lo)], [pct(v.seeds.hi - v.mean)]] if v.seeds else None
    ax.errorbar(
        [pct(v.mean)],
        [y],
        xerr=err,
        fmt="D",
        color=color,
        capsize=4,
        label="mean, 95 % interval over seeds" if first and seeds else None,
    )
    ax.annotate(_verdict_note(v), (pct(v.mean), y), xytext=(0, 8), textcoords="offset points", fontsize=7, ha="center")


def _caption(comparison: Comparison, shown: int) -> str:
    caption = (
        f"The best configuration was chosen by {comparison.selection}; the differences are on the final slice, which "
        "only reports. p (seeds): paired t-test over the seeds (repeat r trains every configuration with "
        "the same seed); p (examples): exact McNemar test on the shared final-slice examples, pooled over "
        "the seeds, which speaks to the evaluation sample's noise only. Red: beyond seed noise; orange: on "
        "these examples only; grey: within noise (neither p below 0.05)."
    )
    if comparison.note:
        caption = f"{capitalised(comparison.note)}. {caption}"
    if len(comparison.verdicts) > shown:
        caption += f" The {shown} closest of {len(comparison.verdicts)} are drawn; all are in the CSV."
    return caption


def configuration_label(config: dict[str, Any], keys: list[str]) -> str:
    """`weighting=balanced, fraction=0.1`: the searched values, short."""
    return ", ".join(
        f"{k.rsplit('.', 1)[-1]}={shown(config[k], digits=3, missing='None')}" for k in keys if k in config
    )


def _verdict_note(v: Verdict) -> str:
    seeds = f"p (seeds) {v.seeds.p:.2g}" if v.seeds else "one seed"
    examples = f", p (examples) {v.p_examples:.2g}" if v.p_examples is not None else ""
    return f"{v.verdict} ({seeds}{examples})"
