"""A sweep's outcome: one row per trial, the best trial and the Pareto front, the line that
reproduces a trial, the end table, and the summary logged into the parent run. No Ray."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satune import tracking
from satune.specs import SweepSpec, interval_keys
from satune.tune.space import REPEAT_KEY


@dataclass
class TrialRow:
    trial_id: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, float]
    seed: int | None = None
    finished: bool = True  # completed, stopped by the scheduler, or failed for good


@dataclass
class SweepResult:
    directory: Path
    rows: list[TrialRow]
    best: TrialRow | None
    pareto: list[TrialRow] = field(default_factory=list)
    interrupted: bool = False


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
    sign = 1 if modes[0] == "max" else -1
    best = max(front, key=lambda r: sign * r.metrics[metrics[0]])
    return best, front if len(metrics) > 1 else []


def log_summary(sweep: SweepSpec, result: SweepResult, uri: str, parent: str) -> None:
    """trials.json, best/<metric>, the Pareto front and counts, into the sweep's parent run."""

    def record(r: TrialRow) -> dict:
        return {"trial_id": r.trial_id, "status": r.status, "seed": r.seed, **r.config, **r.metrics}

    tracking.log_dict(uri, parent, [record(r) for r in result.rows], "trials.json")
    tags: dict[str, object] = {
        "satune.trials": len(result.rows),
        "satune.errors": sum(r.status == "ERROR" for r in result.rows),
    }
    if result.best is not None:
        tags["satune.best_trial"] = result.best.trial_id
        final = {k: v for k, v in result.best.metrics.items() if k.startswith("final/") and "/class_" not in k}
        tracking.log_metrics(uri, parent, {f"best/{m}": result.best.metrics[m] for m in sweep.search.metrics}
                             | {f"best/{k}": v for k, v in final.items()})  # fmt: skip
    if result.pareto:
        tags["satune.pareto_trials"] = ",".join(r.trial_id for r in result.pareto)
        tracking.log_dict(uri, parent, [record(r) for r in result.pareto], "pareto.json")
    tracking.set_tags(uri, parent, tags)


def table(sweep: SweepSpec, result: SweepResult) -> tuple[list[str], list[list[str]]]:
    """The end table: searched values and the key metrics per trial, the objective's best first."""
    shown = ["eval/clean_acc", "eval/pgd_acc"] + (["eval/aa_acc"] if sweep.trial.eval.autoattack.n != 0 else [])
    metrics = list(dict.fromkeys(sweep.search.metrics + shown))
    final = ["final/aa_acc"] if sweep.final_eval is not None else []
    keys = list(sweep.search.space)
    header = ["trial", "status", *keys, *metrics, *(f"{m} [95 %]" for m in final)]
    first, sign = sweep.search.metrics[0], 1 if sweep.search.modes[0] == "max" else -1
    ordered = sorted(result.rows, key=lambda r: -sign * r.metrics.get(first, -sign * float("inf")))
    front = {r.trial_id for r in result.pareto}
    rows = []
    for r in ordered:
        marks = ("best " if result.best is not None and r.trial_id == result.best.trial_id else "") + (
            "pareto " if r.trial_id in front else ""
        )
        status = r.status.lower() if r.finished else "unfinished"
        rows.append([r.trial_id, marks + status, *(_cell(r.config.get(k)) for k in keys),
                     *(_cell(r.metrics.get(m)) for m in metrics), *(_interval(r.metrics, m) for m in final)])  # fmt: skip
    return header, rows


def _interval(metrics: dict[str, float], key: str) -> str:
    if key not in metrics:
        return "-"
    n, lo, hi = (metrics[k] for k in interval_keys(key))
    return f"{metrics[key]:.3f} [{lo:.3f}, {hi:.3f}] n={n:.0f}"


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
