"""The report's figures, each drawn only when the sweep holds what it shows, each with the numbers
behind it. Accuracies are drawn in percent of the evaluated slice; intervals are the 95 % Wilson
intervals the trials logged, spreads are the standard deviation over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import MaxNLocator

from satune.report.fetch import SweepData, Trial
from satune.specs import interval_keys
from satune.sweep.summary import OPTIMISTIC, SweepResult, best_configuration, pareto_front, transfer_matrix
from satune.sweep.summary import ranked as summary_ranked
from satune.tracking.tags import BEST_TRIAL_TAG

# The robust numbers a sweep may report on the final slice, most trustworthy last: PGD and AutoAttack of
# the trials, AutoAttack of the final stage on the winners.
ROBUST = {
    "eval/pgd_acc": ("PGD (trial)", "o"),
    "eval/aa_acc": ("AutoAttack (trial)", "s"),
    "final/aa_acc": ("AutoAttack (final stage)", "D"),
}
CLEAN = "eval/clean_acc"
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


@dataclass
class Drawn:
    name: str  # file stem: <name>.png and <name>.csv
    title: str
    caption: str  # what it shows and how to read it
    figure: Figure
    table: list[dict[str, Any]]  # the numbers behind it, one dict per CSV row


def figures(data: SweepData, echo: Callable[[str], None]) -> list[Drawn]:
    """Every figure the sweep's data supports, in the report's order."""
    drawn = []
    for draw in (
        objective_vs_parameters,
        fraction_curves,
        class_transfer,
        transfer_by_fraction,
        pareto,
        optuna_history,
        optuna_importances,
        biamat_gate,
        learning_curves,
        paired_comparison,
    ):
        echo(f"report: {draw.__name__.replace('_', ' ')}")
        drawn += draw(data)
    return drawn


# --------------------------------------------------------------------------------------------
# Helpers


def robust_metrics(trials: Iterable[Trial]) -> list[str]:
    rows = list(trials)
    return [m for m in ROBUST if any(m in t.row.metrics for t in rows)]


def headline(data: SweepData) -> str:
    """The robust number figures lead with: the strongest attack every finished trial has."""
    for m in reversed(ROBUST):
        if all(m in t.row.metrics for t in data.finished):
            return m
    return data.spec.search.metrics[0]


def ranked(data: SweepData) -> list[Trial]:
    """The finished trials that report the search's objective, best first."""
    metric = data.spec.search.metrics[0]
    have = [t for t in data.finished if metric in t.row.metrics]
    return summary_ranked(have, lambda t: t.row.metrics[metric], data.spec.search.modes[0])


def best_trial(data: SweepData) -> str | None:
    """The trial the sweep's summary named best: chosen on the select slice (with repeats, the best
    configuration's first repeat)."""
    if BEST_TRIAL_TAG in data.tags:
        return data.tags[BEST_TRIAL_TAG]
    best, _ = best_configuration(data.spec, data.rows)
    return best.trial_id if best is not None else None


def searched_keys(data: SweepData) -> list[str]:
    return [*data.spec.search.grid, *data.spec.search.space]


def label(key: str) -> str:
    units = {"train/grad_evals": "input-gradient evaluations (examples × steps)", "time/total_s": "seconds"}
    if key in units:
        return f"{key} [{units[key]}]"
    if key.endswith("_acc"):
        return f"{key} [% of the slice]"
    return key


def pct(v: float | None) -> float:
    return math.nan if v is None else 100 * v


def interval(metrics: dict[str, float], key: str) -> tuple[float, float]:
    """The 95 % interval of `key` as distances below and above it, in percent (0 where none was logged)."""
    _, lo, hi = interval_keys(key)
    if lo not in metrics or hi not in metrics:
        return 0.0, 0.0
    return pct(metrics[key] - metrics[lo]), pct(metrics[hi] - metrics[key])


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def new_figure(data: SweepData, panels: int, title: str, width: float = 5.2, height: float = 4.0) -> Figure:
    """A figure that says which sweep it belongs to, also when seen alone (in MLflow's artifacts)."""
    # constrained layout, leaving room below for the provenance line
    fig = Figure(figsize=(width * panels, height + 0.7), layout=ConstrainedLayoutEngine(rect=(0, 0.035, 1, 0.965)))
    fig.suptitle(title, fontsize=12)
    sha = data.tags.get("git.sha", "unknown")[:10]
    fig.text(
        0.995,
        0.003,
        f"{data.parent_name} · {data.started:%Y-%m-%d %H:%M} UTC · git {sha}",
        ha="right",
        va="bottom",
        fontsize=7,
        color="#666",
    )
    return fig


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _log_axis(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) >= 10


# --------------------------------------------------------------------------------------------
# The searched objective against each searched parameter


def objective_vs_parameters(data: SweepData) -> list[Drawn]:
    out = []
    finished = data.finished
    robust = robust_metrics(finished)
    for key in searched_keys(data):
        values = [t.row.config.get(key) for t in finished]
        if key in ("method.source", "method.classes") or len({str(v) for v in values}) < 2:
            continue  # a source or a class set has figures of its own; one value is no axis
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
                pts = [
                    (float(t.row.config[key]) if numeric else categories.index(str(t.row.config[key])) + shift, t)
                    for t in finished
                    if m in t.row.metrics and key in t.row.config
                ]
                if not pts:
                    continue
                name, marker = ROBUST.get(m, ("clean", "o"))
                err = list(zip(*(interval(t.row.metrics, m) for _, t in pts), strict=True))
                ax.errorbar(
                    [x for x, _ in pts],
                    [pct(t.row.metrics[m]) for _, t in pts],
                    yerr=err,
                    fmt=marker,
                    color=COLORS[i],
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
                        color=COLORS[i],
                        alpha=0.7,
                        label=f"{name}: mean over seeds",
                    )
                table += [
                    {
                        "trial": t.row.trial_id,
                        key: t.row.config[key],
                        "metric": m,
                        "value": t.row.metrics[m],
                        **_bounds(t.row.metrics, m),
                    }
                    for _, t in pts
                ]
            ax.set_xlabel(key)
            ax.set_ylabel(f"{what} accuracy [% of the final slice]")
            ax.grid(alpha=0.3)
            if numeric and _log_axis([float(v) for v in values if v is not None]):
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(range(len(categories)), categories, rotation=20)
            if ax.has_data():
                ax.legend(fontsize=7)
        out.append(
            Drawn(
                f"objective_vs_{_stem(key)}",
                f"Accuracy against {key}",
                "Each point is one trial on the final slice, with its 95 % Wilson interval; markers tell "
                "PGD from AutoAttack. (The search chose on the select slice, proxy/*: these only report.)",
                fig,
                table,
            )
        )
    return out


def _means_by_x(pts: list[tuple[float, Trial]], metric: str) -> dict[float, float]:
    by_x: dict[float, list[float]] = {}
    for x, t in pts:
        by_x.setdefault(x, []).append(t.row.metrics[metric])
    return {x: statistics.fmean(v) for x, v in sorted(by_x.items())}


def _bounds(metrics: dict[str, float], key: str) -> dict[str, float | None]:
    n, lo, hi = interval_keys(key)
    return {"n": metrics.get(n), "lo95": metrics.get(lo), "hi95": metrics.get(hi)}


def _stem(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)


# --------------------------------------------------------------------------------------------
# Accuracy against the attacked fraction (SAT's Fig. 3-5 shape)


def fraction_curves(data: SweepData) -> list[Drawn]:
    keys = searched_keys(data)
    if "method.fraction" not in keys:
        return []
    finished = [t for t in data.finished if is_number(t.row.config.get("method.fraction"))]
    if len({t.row.config["method.fraction"] for t in finished}) < 2:
        return []
    others = [k for k in data.spec.search.grid if k not in ("method.fraction", "method.source")]
    groups: dict[str, list[Trial]] = {}
    for t in finished:
        groups.setdefault(", ".join(f"{k.split('.')[-1]}={t.row.config.get(k)}" for k in others) or "all", []).append(t)
    robust = headline(data)
    fig = new_figure(data, 2, "accuracy against the attacked fraction (mean ± std over seeds)")
    table = []
    for ax, metric in ((fig.add_subplot(1, 2, 1), CLEAN), (fig.add_subplot(1, 2, 2), robust)):
        for i, (name, members) in enumerate(sorted(groups.items())):
            by_f: dict[float, list[float]] = {}
            for t in members:
                if metric in t.row.metrics:
                    by_f.setdefault(float(t.row.config["method.fraction"]), []).append(t.row.metrics[metric])
            if not by_f:
                continue
            xs = sorted(by_f)
            stats = [mean_std(by_f[x]) for x in xs]
            means, stds = [pct(m) for m, _ in stats], [pct(s) for _, s in stats]
            ax.plot(xs, means, "o-", color=COLORS[i % len(COLORS)], label=name)
            ax.fill_between(
                xs,
                [m - s for m, s in zip(means, stds, strict=True)],
                [m + s for m, s in zip(means, stds, strict=True)],
                color=COLORS[i % len(COLORS)],
                alpha=0.15,
            )
            table += [
                {"group": name, "fraction": x, "metric": metric, "mean": st[0], "std": st[1], "n": len(by_f[x])}
                for x, st in zip(xs, stats, strict=True)
            ]
        ax.set_xlabel("attacked fraction f (method.fraction)")
        ax.set_ylabel(label(metric))
        ax.set_title(ROBUST.get(metric, ("clean",))[0], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    caption = (
        f"One line per {', '.join(others) or 'sweep'}; the band is ± one standard deviation over the "
        f"seeds of each point (n in the CSV)."
    )
    return [Drawn("fraction_curves", "Accuracy against the attacked fraction", caption, fig, table)]


# --------------------------------------------------------------------------------------------
# Class transfer (SAT's Fig. 2) and transferred robustness (Fig. 7/8)


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
    return [Drawn("class_transfer_matrix", "Class-transfer matrix", f"{title[0].upper()}{title[1:]}.", fig, table)]


def transfer_by_fraction(data: SweepData) -> list[Drawn]:
    """A transfer sweep: the target's robustness against the source's attacked fraction, one line
    per source weighting; sources trained without SAT (clean, full AT) drawn as reference lines."""
    if not data.sources:
        return []
    robust = headline(data)
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
            color=COLORS[i % len(COLORS)],
            label=name,
        )
        table += [
            {"source": name, "fraction": x, "mean": m, "std": s, "n": len(by_f[x])}
            for x, (m, s) in zip(xs, stats, strict=True)
        ]
    for j, (kind, values) in enumerate(sorted(references.items())):
        m, s = mean_std(values)
        ax.axhline(pct(m), ls="--", color=COLORS[(len(lines) + j) % len(COLORS)], label=f"source: {kind} (mean)")
        table.append({"source": kind, "fraction": "", "mean": m, "std": s, "n": len(values)})
    ax.set_xlabel("the source's attacked fraction f")
    ax.set_ylabel(f"target {label(robust)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    caption = "Mean ± std over the sources trained alike (their seeds) and the target's repeats."
    return [Drawn("transfer_by_fraction", "Transferred robustness by source", caption, fig, table)]


# --------------------------------------------------------------------------------------------
# Trade-offs


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
        have = [t for t in trials if other in t.row.metrics]
        front = {r.trial_id for r in pareto_front([t.row for t in have], [robust, other], ["max", mode])}
        scale = pct if other.endswith("_acc") else float
        xs = [scale(t.row.metrics[other]) for t in have]
        ys = [pct(t.row.metrics[robust]) for t in have]
        ax.scatter(xs, ys, color="#999", s=18, label="trial")
        on = sorted((x, y) for x, y, t in zip(xs, ys, have, strict=True) if t.row.trial_id in front)
        ax.plot([x for x, _ in on], [y for _, y in on], "o-", color=COLORS[1], label="Pareto front")
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
        ax.set_xlabel(label(other))
        ax.set_ylabel(label(robust))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    caption = (
        f"{robust} against clean accuracy (both higher is better; "
        f"{'the final slice: ' + OPTIMISTIC if data.optimistic else 'the select slice, which chooses'})"
        + (" and against the training cost (lower is better)" if len(panels) > 1 else "")
        + ". The sweep's best trial (the one its summary names) is labelled."
    )
    return [Drawn("pareto", "Pareto fronts", caption, fig, table)]


# --------------------------------------------------------------------------------------------
# Optuna's view: its studies, read from the sweep's journal


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
        color = COLORS[i % len(COLORS)]
        name = study.study_name if len(studies) > 1 else "trial"
        ax.plot([t.number for t in done], [pct(v) for v in values], "o", color=color, alpha=0.6, label=name)
        ax.step(
            [t.number for t in done],
            [pct(v) for v in best],
            where="post",
            color=color,
            alpha=0.9,
            label=f"best so far{'' if len(studies) == 1 else f' ({name})'}",
        )
        table += [
            {"study": study.study_name, "number": t.number, metric: v, "best_so_far": b, **t.params}
            for t, v, b in zip(done, values, best, strict=True)
        ]
    ax.set_xlabel("Optuna trial number (order of proposal)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label(metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(studies) > 3 else 1)
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
            color=COLORS[i % len(COLORS)],
            label=s if len(studies) > 1 else None,
        )
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(names))], names)
    ax.set_xlabel("importance (share of the objective's variance)")
    if len(studies) > 1:
        ax.legend(fontsize=7)
    return [
        Drawn(
            "optuna_importances",
            "Parameter importances",
            "How much of the objective's variance each searched parameter explains.",
            fig,
            rows,
        )
    ]


# --------------------------------------------------------------------------------------------
# Training dynamics


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
                color=COLORS[i % len(COLORS)],
                label=f"{t.row.trial_id}: {source}",
            )
            table += [{"trial": t.row.trial_id, "metric": key, "epoch": s + 1, "value": v} for s, v in h]
    ax.set_xlabel("epoch")
    ax.set_ylabel("Hi ratio [% of auxiliary images above ω]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if has_omega:
        ax2 = fig.add_subplot(1, 2, 2)
        for i, t in enumerate(trials):
            h = data.history(t, "biamat/omega")
            ax2.plot(
                [s + 1 for s, _ in h], [v for _, v in h], "o-", color=COLORS[i % len(COLORS)], label=t.row.trial_id
            )
            table += [{"trial": t.row.trial_id, "metric": "biamat/omega", "epoch": s + 1, "value": v} for s, v in h]
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("ω (confidence threshold, π × mean primary confidence)")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    return [Drawn("biamat_gate", "BiaMAT's gate", "The best trials by the search's objective.", fig, table)]


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
        color = COLORS[i % len(COLORS)]
        for ax, key in zip(axes, ("select/clean_acc", "select/pgd_acc"), strict=True):
            h = data.history(t, key)
            ax.plot([s + 1 for s, _ in h], [pct(v) for _, v in h], "o-", ms=3, color=color, label=t.row.trial_id)
            table += [{"trial": t.row.trial_id, "metric": key, "epoch": s + 1, "value": v} for s, v in h]
        selected = t.row.metrics.get("train/selected_epoch")
        if selected is not None:
            for ax in axes:
                ax.axvline(selected + 1, color=color, ls=":", alpha=0.8)
        last, chosen = t.row.metrics.get("last/pgd_acc"), t.row.metrics.get("eval/pgd_acc")
        table.append(
            {
                "trial": t.row.trial_id,
                "metric": "final slice PGD: selected vs last epoch",
                "epoch": None if selected is None else selected + 1,
                "value": chosen,
                "last": last,
            }
        )
        if last is not None and chosen is not None:
            axes[1].annotate(
                f"{t.row.trial_id}: final slice PGD {pct(chosen):.1f} % selected, {pct(last):.1f} % last",
                (0.02, 0.04 + 0.07 * i),
                xycoords="axes fraction",
                fontsize=7,
                color=color,
            )
    for ax, key in zip(axes, ("select/clean_acc", "select/pgd_acc"), strict=True):
        ax.set_xlabel("epoch (dotted: the selected checkpoint)")
        ax.set_ylabel(label(key))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    caption = "Selection-slice accuracy per epoch; the dotted line is the epoch whose checkpoint was kept."
    return [Drawn("learning_curves", "Learning curves", caption, fig, table)]


# --------------------------------------------------------------------------------------------
# Is the best configuration's lead larger than noise?


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
    seeds = any(v.seeds is not None for v in shown)
    fig = new_figure(
        data,
        1,
        f"the best configuration ({best}) against the others: best - other",
        width=8.5,
        height=1.6 + 0.55 * len(shown),
    )
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(shown)))[::-1]  # the closest runner-up on top
    for y, v in zip(ys, shown, strict=True):
        color = {"seeds": COLORS[1], "examples": COLORS[4]}.get(v.supported_by or "", "#777")
        ax.scatter(
            [pct(d) for d in v.differences],
            [y] * len(v.differences),
            s=14,
            color=color,
            alpha=0.45,
            label="one seed (repeat)" if y == ys[0] else None,
        )
        err = [[pct(v.mean - v.seeds.lo)], [pct(v.seeds.hi - v.mean)]] if v.seeds else None
        ax.errorbar(
            [pct(v.mean)],
            [y],
            xerr=err,
            fmt="D",
            color=color,
            capsize=4,
            label="mean, 95 % interval over seeds" if y == ys[0] and seeds else None,
        )
        ax.annotate(
            _verdict_note(v), (pct(v.mean), y), xytext=(0, 8), textcoords="offset points", fontsize=7, ha="center"
        )
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys, [name(v.other) for v in shown])
    ax.set_ylim(-0.7, len(shown) - 0.3)
    metrics = sorted({v.metric for v in shown})
    ax.set_xlabel(f"{' / '.join(metrics)}: best - other [points, % of the final slice]")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    caption = (
        f"The best configuration was chosen by {comparison.selection}; the differences are on the final slice, which "
        "only reports. p (seeds): paired t-test over the seeds (repeat r trains every configuration with "
        "the same seed); p (examples): exact McNemar test on the shared final-slice examples, pooled over "
        "the seeds, which speaks to the evaluation sample's noise only. Red: beyond seed noise; orange: on "
        "these examples only; grey: within noise (neither p below 0.05)."
    )
    if comparison.note:
        caption = f"{comparison.note[0].upper()}{comparison.note[1:]}. {caption}"
    if len(comparison.verdicts) > len(shown):
        caption += f" The {len(shown)} closest of {len(comparison.verdicts)} are drawn; all are in the CSV."
    table = [v.record() | {"best": comparison.best.key, "other_label": name(v.other)} for v in comparison.verdicts]
    return [Drawn("paired_comparison", "Is the best configuration better, or within noise?", caption, fig, table)]


MAX_VERDICTS = 12  # runners-up drawn; a larger sweep's are in the CSV


def configuration_label(config: dict[str, Any], keys: list[str]) -> str:
    """`weighting=balanced, fraction=0.1`: the searched values, short."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(config[k])}" for k in keys if k in config)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _verdict_note(v) -> str:
    seeds = f"p (seeds) {v.seeds.p:.2g}" if v.seeds else "one seed"
    examples = f", p (examples) {v.p_examples:.2g}" if v.p_examples is not None else ""
    return f"{v.verdict} ({seeds}{examples})"
