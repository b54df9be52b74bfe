"""What a finished (or interrupted) sweep prints, as data: its tables, then its lines. The CLI renders
it; nothing here knows of a terminal."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from satune.specs import SweepSpec
from satune.sweep.summary import (
    CONFIGURATIONS_CSV,
    TRIALS_CSV,
    SweepResult,
    _interval,
    config_id,
    configuration_table,
    configurations,
    reproduce_command,
    selection,
    source_table,
    table,
    transfer_matrix,
)
from satune.sweep.verdicts import sentence, verdict_table


@dataclass
class Shown:
    title: str
    header: list[str]
    rows: list[list[str]]
    text_columns: int  # left-aligned columns, counted from the left


@dataclass
class Ending:
    tables: list[Shown] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    command: str | None = None  # the line that reproduces the best trial: never wrapped, to copy whole
    last: str | None = None
    interrupted: bool = False
    failed: bool = False  # a trial ended in error


def ending(spec: SweepSpec, result: SweepResult, file: Path) -> Ending:
    out = Ending(interrupted=result.interrupted, failed=any(r.status == "ERROR" for r in result.rows))
    title = f"sweep {spec.name}: {len(result.rows)} trials ({result.directory})"
    out.tables.append(_top(Shown(title, *table(spec, result), 2), "trials", result.directory / TRIALS_CSV))
    if spec.search.repeats > 1:
        title = f"per configuration, over its {spec.search.repeats} repeats (one seed each), best first by {spec.search.metrics[0]}"
        where = result.directory / CONFIGURATIONS_CSV
        out.tables.append(_top(Shown(title, *configuration_table(spec, result), 1), "configurations", where))
        if result.comparison is not None and result.comparison.verdicts:
            title = "the best configuration against each other, on the final slice: paired over seeds and examples"
            where = result.directory / "verdicts.json"
            out.tables.append(_top(Shown(title, *verdict_table(spec, result.comparison), 1), "verdicts", where))
    if (sources := source_table(spec, result)) is not None:
        out.tables.append(Shown("transferred, by source (mean ± std over the sources trained alike)", *sources, 1))
    if (matrix := transfer_matrix(spec, result)) is not None:
        title = f"class-transfer matrix: {matrix[0]} ({result.directory / 'transfer_matrix.csv'})"
        out.tables.append(Shown(title, *matrix[1:], 1))
    if result.interrupted:
        return out
    if result.pareto:
        out.lines.append(
            f"Pareto front ({', '.join(spec.search.metrics)}): {', '.join(r.trial_id for r in result.pareto)}"
        )
    if result.best is not None:
        out.lines += _best_lines(spec, result)
        threads = None if spec.trial.runtime.threads is not None else max(1, int(spec.resources.cpu))
        out.command = "  " + reproduce_command(file, result.best, threads)
    out.last = f"compare the trials in the MLflow UI: satune ui {file}"
    return out


END_ROWS = 20  # a table longer than a screen is read in a file: its top rows here, and where the rest are


def _top(table: Shown, what: str, where: Path) -> Shown:
    """The table's first END_ROWS rows (best first), its title saying how many more and where."""
    if len(table.rows) <= END_ROWS:
        return table
    title = f"{table.title}; the top {END_ROWS}, {len(table.rows) - END_ROWS} more {what} in {where}"
    return Shown(title, table.header, table.rows[:END_ROWS], table.text_columns)


def _best_lines(spec: SweepSpec, result: SweepResult) -> list[str]:
    """The best (configuration), what chose it, what the verdicts cannot say, and how to reproduce it."""
    best = result.best
    assert best is not None
    first = spec.search.metrics[0]
    values = ", ".join(f"{k}={v}" for k, v in best.config.items() if k != "repeat")
    what = f"best trial {best.trial_id}" + (f" ({values})" if values else "")
    value = _interval(best.metrics, first)
    if spec.search.repeats > 1:
        what = f"best configuration {config_id(best.config)}" + (f" ({values})" if values else "")
        group = next(g for g in configurations(result.rows) if best in g.rows)
        stats = group.stats(first)
        value = f"{stats[0]:.4f} ± {stats[1]:.4f}" if stats else "-"
    lines = [f"{what}, chosen by {selection(spec, best)}: {value}"]
    comparison = result.comparison
    if comparison is not None and comparison.note:  # what the comparison cannot say (no repeats)
        lines.append(f"  note: {comparison.note}")
        for v in comparison.verdicts[:3]:  # one seed each: the per-example test of the closest
            (trial,) = [r.trial_id for r in comparison.others[v.other].rows]
            lines.append(f"  against trial {trial}: {sentence(v)}")
    again = f"its repeat {best.config.get('repeat', 0)}, trial {best.trial_id}: " if spec.search.repeats > 1 else ""
    lines.append(f"{again}reproduce it without Ray or MLflow:")
    return lines
