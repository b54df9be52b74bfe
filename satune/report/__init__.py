"""`satune report`: a finished sweep's figures, the numbers behind them and its model cards, read
through MLflow's client, written as a self-contained HTML page and logged into the parent run."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from satune import tracking
from satune.report.fetch import ReportError, SweepData, find_sweep
from satune.report.figures import figures
from satune.report.formats import revision, started
from satune.report.page import render
from satune.sweep.summary import (
    OPTIMISTIC,
    SweepResult,
    best_configuration,
    configuration_records,
    configuration_table,
    flat_configuration,
    shown_metrics,
    source_label,
    source_table,
    table,
    transfer_matrix,
)
from satune.sweep.verdicts import verdict_table
from satune.tracking.tags import BEST_TRIAL_TAG

__all__ = ["ReportError", "build_report"]

ARTIFACT_DIR = "report"  # in the parent run: report/index.html


def build_report(
    uri: str, name: str, out: Path | None = None, echo: Callable[[str], None] = print, log: bool = True
) -> Path:
    """The report of the newest run of sweep `name`; returns index.html's path. `out` defaults to
    report/ in the sweep's run folder (or ./report-<run> when that folder is on another machine)."""
    data = find_sweep(uri, name, echo)
    if out is None:
        out = data.run_dir / "report" if data.run_dir.exists() else Path.cwd() / f"report-{data.parent_name}"
    out.mkdir(parents=True, exist_ok=True)
    drawn = figures(data, echo)
    written = []
    for d in drawn:
        d.figure.savefig(out / f"{d.name}.png", dpi=100)
        written += [out / f"{d.name}.png", _write_csv(out / f"{d.name}.csv", d.table)]
    cards = _cards(data)
    if cards:
        written.append(_write_csv(out / "cards.csv", [_flat(c) for c in cards]))
    written.append(_write_csv(out / "trials.csv", _trial_records(data)))
    index = out / "index.html"
    result = _result(data)
    configurations = configuration_table(data.spec, result) if data.spec.search.repeats > 1 else None
    if configurations is not None:
        records = [flat_configuration(c) for c in configuration_records(data.spec, result)]
        written.append(_write_csv(out / "configurations.csv", records))
    index.write_text(render(data, drawn, table(data.spec, result), configurations, cards, out))
    written += [index, _write_verdicts(out / "verdicts.json", data), write_tables(out / "tables.md", data, result)]
    if log:
        echo(f"report: logging {len(written)} files into the parent run's artifacts ({ARTIFACT_DIR}/)")
        for path in written:
            tracking.log_file(uri, data.parent_id, path, ARTIFACT_DIR)
    echo(f"report: {index} ({len(drawn)} figures{f', {len(cards)} model cards' if cards else ''})")
    return index


def _result(data: SweepData) -> SweepResult:
    """The sweep's outcome for its tables: the best as the select slice chose it (the summary names
    the same), the verdicts against it."""
    best, pareto = best_configuration(data.spec, data.rows)
    named = [r for r in data.rows if r.trial_id == data.tags.get(BEST_TRIAL_TAG)]
    labels = {s: source_label(p) for s, p in data.sources.items()}
    return SweepResult(
        data.run_dir, data.rows, named[0] if named else best, pareto, labels=labels, comparison=data.comparison
    )


def _write_verdicts(path: Path, data: SweepData) -> Path:
    path.write_text(json.dumps(data.comparison.records(), indent=2) + "\n")
    return path


def write_tables(path: Path, data: SweepData, result: SweepResult) -> Path:
    """The sweep's tables as Markdown, each under the provenance that regenerates it: what
    docs/findings.md quotes."""
    spec = data.spec
    lines = [
        f"# {spec.name}",
        "",
        f"Run {data.parent_name}, MLflow parent run `{data.parent_id}`, git {revision(data.tags, 10)}, started "
        f"{started(data.started)}; {len(data.finished)} of {len(data.trials)} trials finished. "
        f"The best was chosen by {data.comparison.selection}. Regenerate: `satune report <its sweep file>` "
        f"(or `satune report {spec.name} --tracking-uri URI`).",
        "",
    ]
    if data.optimistic:
        lines += [f"**{OPTIMISTIC}**", ""]
    if data.comparison.note:
        lines += [f"Note: {data.comparison.note}.", ""]
    sections = []
    if spec.search.repeats > 1:
        sections.append(("Configurations (mean ± std over seeds)", configuration_table(spec, result)))
    if data.comparison.verdicts:
        sections.append(
            (
                "The best configuration against each other (paired over seeds and examples)",
                verdict_table(spec, data.comparison),
            )
        )
    if (sources := source_table(spec, result)) is not None:
        sections.append(("Transferred, by source (mean ± std over the sources trained alike)", sources))
    if (matrix := transfer_matrix(spec, result)) is not None:
        sections.append((f"Class-transfer matrix: {matrix[0]}", (matrix[1], matrix[2])))
    sections.append(("Trials", table(spec, result)))
    for title, (header, rows) in sections:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows] + [""]
    path.write_text("\n".join(lines))
    return path


def _trial_records(data: SweepData) -> list[dict[str, Any]]:
    metrics = shown_metrics(data.spec)
    return [
        {
            "trial": t.row.trial_id,
            "run_id": t.run_id,
            "status": t.row.status,
            "seed": t.row.seed,
            **t.row.config,
            **{m: t.row.metrics.get(m) for m in metrics},
        }
        for t in data.trials
    ]


def _cards(data: SweepData) -> list[dict[str, Any]]:
    """The newest final-stage card of each trial that has one, with how the sweep chose its winners."""
    cards = []
    for t in data.finished:
        labels = data.final_labels(t)
        text = data.artifact_text(t, f"final/{labels[-1]}/card.json") if labels else None
        if text is not None:
            cards.append({"trial": t.row.trial_id, **json.loads(text), "selection": data.comparison.selection})
    return cards


def _flat(card: dict[str, Any]) -> dict[str, Any]:
    return tracking.flatten(card) | {"autoattack_acc_95": json.dumps(card["autoattack_acc_95"])}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
    return path


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v
