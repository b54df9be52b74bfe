"""A sweep's outcome: one row per trial, the best trial and the Pareto front, the line that
reproduces a trial, the end table, and the summary logged into the parent run. No Ray."""

from __future__ import annotations

import csv
import hashlib
import json
import shlex
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from satune import tracking
from satune.specs import SweepSpec, interval_keys
from satune.sweep.shown import shown
from satune.tracking.tags import (
    BEST_CONFIG_TAG,
    BEST_TRIAL_TAG,
    ERRORS_TAG,
    PARETO_TAG,
    SELECTION_TAG,
    TRANSFER_MATRIX_TAG,
    TRIALS_TAG,
)

T = TypeVar("T")
REPEAT_KEY = "repeat"  # grid sweeps: which repetition of the grid a trial is (part of its seed)

if TYPE_CHECKING:
    from satune.sweep.verdicts import Comparison


@dataclass
class TrialRow:
    trial_id: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, float]
    seed: int | None = None
    finished: bool = True  # completed, stopped by the scheduler, or failed for good


@dataclass
class Configuration:
    """The repeats of one configuration (the same values, one seed each)."""

    key: str
    config: dict[str, Any]  # the values, without the repeat index
    rows: list[TrialRow]

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.rows if metric in r.metrics]

    def stats(self, metric: str) -> tuple[float, float, int] | None:
        """Mean, sample standard deviation (0 for one value) and n over the repeats that report it."""
        values = self.values(metric)
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)

    def mean(self, metric: str) -> float | None:
        s = self.stats(metric)
        return None if s is None else s[0]

    def as_row(self, metrics: list[str]) -> TrialRow:
        """A row of means, to rank configurations as trials are ranked."""
        means = {m: s[0] for m in metrics if (s := self.stats(m)) is not None}
        return TrialRow(self.key, "TERMINATED", self.config, means)


def config_id(config: dict[str, Any]) -> str:
    """The same values, the same id, whichever repeat: a key MLflow's UI can group runs by."""
    values = {k: v for k, v in config.items() if k != REPEAT_KEY}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def configurations(rows: list[TrialRow]) -> list[Configuration]:
    groups: dict[str, Configuration] = {}
    for r in sorted(rows, key=lambda r: r.config.get(REPEAT_KEY, 0)):
        key = config_id(r.config)
        config = {k: v for k, v in r.config.items() if k != REPEAT_KEY}
        groups.setdefault(key, Configuration(key, config, [])).rows.append(r)
    return list(groups.values())


def best_configuration(
    sweep: SweepSpec, rows: list[TrialRow], metrics: list[str] | None = None
) -> tuple[TrialRow | None, list[TrialRow]]:
    """With repeats, configurations compete by their means: the best one's first repeat, and the
    first repeats of the Pareto front. Without, the trials themselves."""
    metrics = metrics or sweep.search.metrics
    modes = sweep.search.modes if metrics == sweep.search.metrics else ["max"] * len(metrics)
    finished = [r for r in rows if r.status == "TERMINATED"]
    if sweep.search.repeats == 1:
        return best_of(finished, metrics, modes)
    groups = {g.key: g for g in configurations(finished)}
    best, front = best_of([g.as_row(metrics) for g in groups.values()], metrics, modes)
    first = lambda row: groups[row.trial_id].rows[0]  # noqa: E731
    return (first(best) if best else None), [first(r) for r in front]


@dataclass
class SweepResult:
    directory: Path
    rows: list[TrialRow]
    best: TrialRow | None
    pareto: list[TrialRow] = field(default_factory=list)
    interrupted: bool = False
    labels: dict[str, str] = field(default_factory=dict)  # a transfer source (mlflow:<id>) -> what it is
    comparison: Comparison | None = None  # the best configuration against the others (tune.verdicts)


def reproduce_command(source: Path, row: TrialRow, threads: int | None) -> str:
    """The `satune run` line that retrains `row` without Ray or MLflow, quoted for a POSIX shell:
    its values come from a sweep file that someone else may have written."""
    args = ["satune", "run", str(source)]
    for key, value in sorted(row.config.items()):
        if key != REPEAT_KEY:
            args += ["--set", f"{key}={_literal(value)}"]
    args += ["--set", f"seed={row.seed}"]
    if threads is not None:
        args += ["--set", f"runtime.threads={threads}"]
    return shlex.join(args)


def _literal(value: Any) -> str:
    """A value as `--set` reads it back (YAML): JSON, but PyYAML reads 1e-05 as text, 1.0e-05 as a float."""
    text = json.dumps(value)
    return text.replace("e", ".0e", 1) if isinstance(value, float) and "e" in text and "." not in text else text


def ranked(
    items: Iterable[T], value: Callable[[T], float | None], mode: str, tie: Callable[[T], Any] | None = None
) -> list[T]:
    """The one ranking rule: best first by `value` under `mode` (max or min), items without a value last,
    ties by `tie` (a trial id: the same order after a --resume that lists trials in another order),
    else in their given order."""
    sign = 1 if mode == "max" else -1

    def key(item: T) -> tuple[bool, float, Any]:
        v = value(item)
        return v is None, 0.0 if v is None else -sign * v, tie(item) if tie is not None else 0

    return sorted(items, key=key)


def pareto_front(rows: list[TrialRow], metrics: list[str], modes: list[str]) -> list[TrialRow]:
    """Rows no other row dominates (at least as good in every objective, better in one)."""

    def score(r: TrialRow) -> list[float]:
        return [r.metrics[m] if mode == "max" else -r.metrics[m] for m, mode in zip(metrics, modes, strict=True)]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    scores = [score(r) for r in rows]
    return [r for r, s in zip(rows, scores, strict=True) if not any(dominates(o, s) for o in scores)]


def best_of(rows: list[TrialRow], metrics: list[str], modes: list[str]) -> tuple[TrialRow | None, list[TrialRow]]:
    scored = [r for r in rows if all(m in r.metrics for m in metrics)]
    if not scored:
        return None, []
    front = pareto_front(scored, metrics, modes) if len(metrics) > 1 else scored
    # A tie (likely on a select slice of a few hundred examples) goes to the lower id: the same best, and
    # the same final-stage winners, after a --resume that lists the trials in another order.
    best = ranked(front, lambda r: r.metrics[metrics[0]], modes[0], tie=lambda r: r.trial_id)[0]
    return best, front if len(metrics) > 1 else []


def log_summary(sweep: SweepSpec, result: SweepResult, uri: str, parent: str) -> None:
    """trials.json, best/<metric>, the Pareto front and counts, into the sweep's parent run."""

    def record(r: TrialRow) -> dict:
        return {"trial_id": r.trial_id, "status": r.status, "seed": r.seed, **r.config, **r.metrics}

    tracking.log_dict(uri, parent, [record(r) for r in result.rows], "trials.json")
    write_csv(result.directory / TRIALS_CSV, [record(r) for r in result.rows])
    tags: dict[str, object] = {
        TRIALS_TAG: len(result.rows),
        ERRORS_TAG: sum(r.status == "ERROR" for r in result.rows),
        SELECTION_TAG: selection(sweep, result.best),
    }
    if result.best is not None:
        tags[BEST_TRIAL_TAG] = result.best.trial_id
        chose = {k for m in sweep.search.metrics for k in (m, *interval_keys(m))}  # with its n and interval
        best = {
            k: v for k, v in result.best.metrics.items() if k in chose or k.startswith("final/") and "/class_" not in k
        }
        if sweep.search.repeats > 1:  # the best configuration's mean and spread over its repeats
            (group,) = [g for g in configurations(result.rows) if result.best in g.rows]
            tags[BEST_CONFIG_TAG] = group.key
            stats = {k: s for k in best if (s := group.stats(k)) is not None}
            best = {k: s[0] for k, s in stats.items()} | {f"{k}_std": s[1] for k, s in stats.items()}
        tracking.log_metrics(uri, parent, {f"best/{k}": v for k, v in best.items()})
    if result.pareto:
        tags[PARETO_TAG] = ",".join(r.trial_id for r in result.pareto)
        tracking.log_dict(uri, parent, [record(r) for r in result.pareto], "pareto.json")
    if sweep.search.repeats > 1:
        records = configuration_records(sweep, result)
        tracking.log_dict(uri, parent, records, "configurations.json")
        write_csv(result.directory / CONFIGURATIONS_CSV, [flat_configuration(c) for c in records])
    matrix = transfer_matrix(sweep, result)
    if matrix is not None:
        title, header, rows = matrix
        csv = "\n".join(",".join(f'"{c}"' if "," in c else c for c in line) for line in [header, *rows]) + "\n"
        (result.directory / "transfer_matrix.csv").write_text(csv)
        tracking.log_text(uri, parent, csv, "transfer_matrix.csv")
        tags[TRANSFER_MATRIX_TAG] = title
    tracking.set_tags(uri, parent, tags)


TRIALS_CSV, CONFIGURATIONS_CSV = "trials.csv", "configurations.csv"  # beside sweep.json: every row


def write_csv(path: Path, records: list[dict]) -> None:
    """Records as CSV, one column per key any record has (in first-seen order)."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(records)


def flat_configuration(record: dict) -> dict:
    """A configuration record with its statistics as columns (`<metric> mean`, `... std`, `... n`)."""
    out: dict = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out |= {f"{k} {stat}": x for stat, x in v.items()}
        else:
            out[k] = " ".join(v) if isinstance(v, list) else v
    return out


def shown_metrics(sweep: SweepSpec) -> list[str]:
    """The metrics the end tables show: the searched ones, the final slice's, the final stage's."""
    evals = ["eval/clean_acc", "eval/pgd_acc"] + (["eval/aa_acc"] if sweep.trial.eval.autoattack.n != 0 else [])
    return list(dict.fromkeys(sweep.search.metrics + evals + (["final/aa_acc"] if sweep.final_eval else [])))


FLAG_METRICS = ("train/collapsed", "last/overfit")  # what `flags` reads


def tune_metrics(sweep: SweepSpec) -> list[str]:
    """What a trial's final report tells Tune: the searched and shown metrics with their intervals,
    the scheduler's and the flags; the searchers, the scheduler and the live view read no more. The
    rest (per class, per subset, the last epoch's) goes to MLflow alone, where the sweep's rows read
    it: Tune keeps the last result and running statistics of every metric it is told, for every trial,
    in the driver's memory and in the state it saves every few seconds."""
    names = [*shown_metrics(sweep), sweep.scheduler.metric, sweep.trial.eval.select_metric]
    with_intervals = [k for m in names for k in (m, *(interval_keys(m) if "_acc" in m else ()))]
    return list(dict.fromkeys(with_intervals + list(FLAG_METRICS)))


def configuration_records(sweep: SweepSpec, result: SweepResult) -> list[dict]:
    """Per configuration: its values, its trials, and mean, std and n of each shown metric."""
    records = []
    for g in configurations(result.rows):
        stats = {m: s for m in shown_metrics(sweep) if (s := g.stats(m)) is not None}
        records.append(
            {
                "config": g.key,
                **g.config,
                "trials": [r.trial_id for r in g.rows],
                **{m: {"mean": s[0], "std": s[1], "n": s[2]} for m, s in stats.items()},
            }
        )
    return records


def table(sweep: SweepSpec, result: SweepResult) -> tuple[list[str], list[list[str]]]:
    """The end table: searched values and the key metrics per trial, the objective's best first; the
    choosing number with its interval and sample size, the final stage's AutoAttack with its, and
    each trial's overfitting flags."""
    first = sweep.search.metrics[0]
    metrics = [m for m in shown_metrics(sweep) if not m.startswith("final/") and m != first]
    final = ["final/aa_acc"] if sweep.final_eval is not None else []
    keys = [*sweep.search.grid, *sweep.search.space] + ([REPEAT_KEY] if sweep.search.repeats > 1 else [])
    chose = f"{first} [95 %]" + (" (test slice: optimistic)" if sweep.search.select_on == "final" else "")
    header = ["trial", "status", *keys, chose, *metrics, *(f"{m} [95 %]" for m in final), "flags"]
    ordered = ranked(result.rows, lambda r: r.metrics.get(first), sweep.search.modes[0])
    front = {r.trial_id for r in result.pareto}
    rows = []
    for r in ordered:
        marks = ("best " if result.best is not None and r.trial_id == result.best.trial_id else "") + (
            "pareto " if r.trial_id in front else ""
        )
        status = r.status.lower() if r.finished else "unfinished"
        rows.append(
            [
                r.trial_id,
                marks + status,
                *(shown(result.labels.get(str(r.config.get(k)), r.config.get(k))) for k in keys),
                _interval(r.metrics, first),
                *(shown(r.metrics.get(m)) for m in metrics),
                *(_interval(r.metrics, m) for m in final),
                flags(r.metrics),
            ]
        )
    return header, rows


def flags(metrics: dict[str, float]) -> str:
    """What went wrong in training, beyond noise: catastrophic overfitting (robust accuracy collapsed
    on the select slice) and robust overfitting (the selected checkpoint beats the last one)."""
    marks = [
        "collapsed" if metrics.get("train/collapsed") == 1 else "",
        "overfit" if metrics.get("last/overfit") == 1 else "",
    ]
    return " ".join(m for m in marks if m) or "-"


OPTIMISTIC = "selected on the test slice (optimistic)"


def selection(sweep: SweepSpec, best: TrialRow | None) -> str:
    """Where the best was chosen, as every report of a choice says it: the metric, the slice and its size."""
    first = sweep.search.metrics[0]
    if sweep.search.select_on == "final":
        return f"{first}, {OPTIMISTIC}"
    n = best.metrics.get(interval_keys(first)[0]) if best is not None and "_acc" in first else None
    where = "the select slice" + (f", {n:.0f} examples" if n is not None else "")
    return f"{first} on {where}" + (f" (mean over {sweep.search.repeats} repeats)" if sweep.search.repeats > 1 else "")


def transfer_matrix(sweep: SweepSpec, result: SweepResult) -> tuple[str, list[str], list[list[str]]] | None:
    """SAT's class-transfer matrix (the paper's Fig. 2) for a sweep over the attacked classes:
    one row per attacked class set, one column per evaluated class, robust accuracy on the final
    slice (mean over repeats), and the A_val / B_val means. None for other sweeps."""
    if "method.classes" not in sweep.search.grid and "method.classes" not in sweep.search.space:
        return None
    names = sweep.trial.data.class_names()
    finished = [r for r in result.rows if r.status == "TERMINATED"]
    if names is None or not finished:
        return None
    # One kind of number for every row: AutoAttack of the final stage, else of the trials, else PGD.
    sources = [("final", "aa"), ("eval", "aa"), ("eval", "pgd")]
    prefix, kind = next(
        ((p, k) for p, k in sources if all(f"{p}/class_{k}_acc/{names[0]}" in r.metrics for r in finished)),
        ("eval", "pgd"),
    )
    columns = [f"{prefix}/class_{kind}_acc/{c}" for c in names] + [f"eval/{kind}_acc_A", f"eval/{kind}_acc_B"]
    if prefix == "final":
        columns[-2:] = [f"final/{kind}_acc_A", f"final/{kind}_acc_B"]
    rows = []
    for g in sorted(configurations(finished), key=lambda g: str(g.config.get("method.classes"))):
        attacked = ",".join(map(str, g.config.get("method.classes") or []))
        rows.append([attacked, *(f"{s[0]:.4f}" if (s := g.stats(c)) else "" for c in columns)])
    title = f"{kind} accuracy ({prefix}) of each evaluated class, by the classes attacked (A)"
    return title, ["attacked", *names, "A_val", "B_val"], rows


def source_label(params: dict[str, str]) -> str:
    """What a transfer source was trained with (its kind, and a SAT source's split, fraction, classes
    and weighting): sources trained alike, with other seeds, share a label and are averaged."""
    keys = ("method.kind", "method.split", "method.fraction", "method.classes", "method.weighting")
    return ", ".join(f"{k.removeprefix('method.')}={params[k]}" for k in keys if k in params)


def source_table(sweep: SweepSpec, result: SweepResult) -> tuple[list[str], list[list[str]]] | None:
    """A transfer sweep, by source: the transferred numbers (mean ± std over the sources trained
    alike, e.g. the seeds of one fraction and weighting): the shape of SAT's Fig. 7/8."""
    if "method.source" not in sweep.search.grid or not result.labels:
        return None
    metrics = [m for m in shown_metrics(sweep) if not m.startswith("proxy/")]
    groups: dict[str, list[TrialRow]] = {}
    for r in result.rows:
        if r.status == "TERMINATED":
            groups.setdefault(result.labels.get(str(r.config.get("method.source")), "?"), []).append(r)
    rows = []
    for label, members in sorted(groups.items()):
        g = Configuration(label, {}, members)
        rows.append(
            [label, *("-" if (s := g.stats(m)) is None else f"{s[0]:.4f} ± {s[1]:.4f} (n={s[2]})" for m in metrics)]
        )
    return ["source", *(f"{m} mean ± std" for m in metrics)], rows


def configuration_table(sweep: SweepSpec, result: SweepResult) -> tuple[list[str], list[list[str]]]:
    """With repeats: one line per configuration, each metric as mean ± std over its n repeats, the
    choosing one first (its verdict against the best: tune.verdicts.verdict_table)."""
    keys = [*sweep.search.grid, *sweep.search.space]
    metrics = shown_metrics(sweep)
    first = sweep.search.metrics[0]
    groups = ranked(configurations(result.rows), lambda g: g.mean(first), sweep.search.modes[0])
    best = result.comparison.best.key if result.comparison is not None and result.comparison.best else None
    rows = []
    for g in groups:
        cells = []
        for m in metrics:
            s = g.stats(m)
            cells.append("-" if s is None else f"{s[0]:.4f} ± {s[1]:.4f} (n={s[2]})")
        rows.append([g.key + (" (best)" if g.key == best else ""), *(shown(g.config.get(k)) for k in keys), *cells])
    return ["config", *keys, *(f"{m} mean ± std" for m in metrics)], rows


def p_value(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}" if p >= 0.001 else "<0.001"


def _interval(metrics: dict[str, float], key: str) -> str:
    if key not in metrics:
        return "-"
    if "_acc" not in key or any(k not in metrics for k in interval_keys(key)):
        return shown(metrics[key])
    n, lo, hi = (metrics[k] for k in interval_keys(key))
    return f"{metrics[key]:.3f} [{lo:.3f}, {hi:.3f}] n={n:.0f}"
