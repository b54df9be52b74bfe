"""Transfer: the class-transfer matrix (SAT's Fig. 2), and a transfer sweep's robustness against
its source's attacked fraction (Fig. 7/8)."""

from __future__ import annotations

import math

from satune.report.fetch import SweepData
from satune.report.figures.drawing import Drawn, color, finish_axes, label, mean_std, new_figure, pct
from satune.report.figures.trials import headline
from satune.report.formats import capitalised
from satune.sweep.summary import SweepResult, transfer_matrix


def class_transfer(data: SweepData) -> list[Drawn]:
    found = transfer_matrix(data.spec, SweepResult(data.run_dir, data.rows, None))
    if found is None or not found[2]:
        return []
    title, header, rows = found
    grid = [[float(c) * 100 if c else math.nan for c in r[1:]] for r in rows]
    fig = new_figure(data, 1, "class-transfer matrix", width=1.0 + 0.62 * len(header), height=0.9 + 0.45 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, r in enumerate(grid):
        for j, v in enumerate(r):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 55 else "black")
    ax.set_xticks(range(len(header) - 1), header[1:])
    ax.set_yticks(range(len(rows)), [r[0] or "none" for r in rows])
    ax.axvline(len(header) - 3.5, color="white", lw=2)
    ax.set_xlabel("evaluated class (A_val, B_val: means over the attacked and the other classes)")
    ax.set_ylabel("attacked classes (A)")
    fig.colorbar(image, ax=ax, label="robust accuracy [% of the class's examples]")
    table = [dict(zip(header, r, strict=True)) for r in rows]
    return [Drawn("class_transfer_matrix", "Class-transfer matrix", f"{capitalised(title)}.", fig, table)]


def transfer_by_fraction(data: SweepData) -> list[Drawn]:
    """A transfer sweep: the target's robustness against the source's attacked fraction, one line
    per source weighting; sources trained without SAT (clean, full AT) drawn as reference lines."""
    if not data.sources:
        return []
    robust = headline(data)
    lines, references = _by_source(data, robust)
    if not lines:
        return []
    fig = new_figure(data, 1, "transferred robustness against the source's attacked fraction", width=6.5)
    ax = fig.add_subplot(1, 1, 1)
    table = []
    for i, (name, by_f) in enumerate(sorted(lines.items())):
        xs = sorted(by_f)
        stats = [mean_std(by_f[x]) for x in xs]
        ax.errorbar(
            xs,
            [pct(m) for m, _ in stats],
            yerr=[pct(s) for _, s in stats],
            fmt="o-",
            capsize=3,
            color=color(i),
            label=name,
        )
        table += [
            {"source": name, "fraction": x, "mean": m, "std": s, "n": len(by_f[x])}
            for x, (m, s) in zip(xs, stats, strict=True)
        ]
    for j, (kind, values) in enumerate(sorted(references.items())):
        m, s = mean_std(values)
        ax.axhline(pct(m), ls="--", color=color(len(lines) + j), label=f"source: {kind} (mean)")
        table.append({"source": kind, "fraction": "", "mean": m, "std": s, "n": len(values)})
    finish_axes(ax, "the source's attacked fraction f", f"target {label(robust)}")
    caption = "Mean ± std over the sources trained alike (their seeds) and the target's repeats."
    return [Drawn("transfer_by_fraction", "Transferred robustness by source", caption, fig, table)]


def _by_source(data: SweepData, robust: str) -> tuple[dict[str, dict[float, list[float]]], dict[str, list[float]]]:
    """The target's `robust` values: per SAT source weighting and fraction, and per kind of the other sources."""
    lines: dict[str, dict[float, list[float]]] = {}
    references: dict[str, list[float]] = {}
    for t in data.finished:
        params = data.sources.get(str(t.row.config.get("method.source")))
        if params is None or robust not in t.row.metrics:
            continue
        value = t.row.metrics[robust]
        if params.get("method.kind") == "sat" and "method.fraction" in params:
            name = f"SAT {params.get('method.weighting', '')}".strip()
            lines.setdefault(name, {}).setdefault(float(params["method.fraction"]), []).append(value)
        else:
            references.setdefault(params.get("method.kind", "?"), []).append(value)
    return lines, references
