"""The report as one HTML page that needs nothing else: figures inlined as PNG data, inline CSS,
no script, no network; the CSV and PNG files beside it for whoever wants the numbers."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from satune.report.fetch import SweepData
from satune.report.figures import Drawn
from satune.report.formats import capitalised, revision, started
from satune.sweep.summary import OPTIMISTIC
from satune.sweep.verdicts import verdict_table

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1180px; padding: 0 20px 40px; color: #222; }
header { border-bottom: 1px solid #ddd; margin-bottom: 18px; }
h1 { font-size: 24px; margin: 20px 0 4px; } h2 { font-size: 19px; margin-top: 34px; }
.meta { color: #555; font-size: 13px; } nav a { margin-right: 12px; font-size: 14px; }
figure { margin: 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 14px; margin-top: 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f5f5f5; }
td:first-child, th:first-child { text-align: left; }
.cards { display: flex; flex-wrap: wrap; gap: 16px; } .cards table { min-width: 320px; }
.warn { background: #fff3cd; border: 1px solid #e0b400; padding: 6px 10px; font-weight: 600; }
.note { color: #444; font-size: 14px; }
"""


Table = tuple[list[str], list[list[str]]]
e = html.escape  # short: the markup below escapes every value it writes


def render(
    data: SweepData,
    drawn: list[Drawn],
    trials: Table,
    configurations: Table | None,
    cards: list[dict[str, Any]],
    out: Path,
) -> str:
    """index.html's text; `drawn` figures are read back from their PNG files in `out`."""
    parts = _head(data) + _header(data, drawn, cards, configurations)
    for d in drawn:
        parts += _figure(d, out)
    parts.append(_verdicts(data))
    if cards:
        parts.append(_cards(cards))
    if configurations is not None:
        parts.append(_configurations(data, configurations))
    parts.append(_trials(trials))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _head(data: SweepData) -> list[str]:
    return [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>satune report: {e(data.spec.name)}</title><style>{STYLE}</style></head><body>",
    ]


def _header(
    data: SweepData, drawn: list[Drawn], cards: list[dict[str, Any]], configurations: Table | None
) -> list[str]:
    """The sweep's name and provenance, how its best was chosen, and a link to each section."""
    spec = data.spec
    objective = ", ".join(f"{m} ({mode})" for m, mode in zip(spec.search.metrics, spec.search.modes, strict=True))
    return [
        f"<header><h1>Sweep {e(spec.name)}</h1>",
        f'<p class="meta">run {e(data.parent_name)} · MLflow parent run {e(data.parent_id)} at {e(data.uri)} · '
        f"started {started(data.started)} · git {e(revision(data.tags))} · {len(data.trials)} trials, "
        f"{len(data.finished)} finished · objective {e(objective)} · method {e(spec.trial.method.kind)}</p>",
        f'<p class="meta">The best was chosen by {e(data.comparison.selection)}; the final slice reports.</p>'
        if not data.optimistic
        else f'<p class="warn">{e(OPTIMISTIC.capitalize())}: this sweep chose on the slice '
        "its numbers are reported on (search.select_on: final), so they overstate what a new test set would show.</p>",
        "<nav>"
        + "".join(f'<a href="#{d.name}">{e(d.title)}</a>' for d in drawn)
        + '<a href="#verdicts">Verdicts</a>'
        + ('<a href="#cards">Model cards</a>' if cards else "")
        + ('<a href="#configurations">Configurations</a>' if configurations else "")
        + '<a href="#trials">Trials</a></nav></header>',
    ]


def _figure(d: Drawn, out: Path) -> list[str]:
    png = base64.b64encode((out / f"{d.name}.png").read_bytes()).decode()
    return [
        f'<section id="{d.name}"><h2>{e(d.title)}</h2><figure>',
        f'<img src="data:image/png;base64,{png}" alt="{e(d.title)}">',
        f'<figcaption>{e(d.caption)} Numbers: <a href="{d.name}.csv">{d.name}.csv</a> · '
        f'image: <a href="{d.name}.png">{d.name}.png</a></figcaption></figure></section>',
    ]


def _verdicts(data: SweepData) -> str:
    comparison = data.comparison
    return (
        '<section id="verdicts"><h2>Verdicts: the best configuration against the others</h2>'
        + (f'<p class="note">{e(capitalised(comparison.note))}.</p>' if comparison.note else "")
        + (_table(*verdict_table(data.spec, comparison)) if comparison.verdicts else "")
        + '<p class="meta">Numbers: <a href="verdicts.json">verdicts.json</a> · tables for a write-up: '
        '<a href="tables.md">tables.md</a></p></section>'
    )


def _cards(cards: list[dict[str, Any]]) -> str:
    return (
        '<section id="cards"><h2>Model cards (RobustBench-style, final-stage AutoAttack)</h2>'
        '<div class="cards">' + "".join(_card(c) for c in cards) + "</div>"
        '<p class="meta">Numbers: <a href="cards.csv">cards.csv</a></p></section>'
    )


PAGE_ROWS = 50  # a table's rows on the page, best first; every row is in its CSV


def _configurations(data: SweepData, configurations: Table) -> str:
    return (
        f'<section id="configurations"><h2>Configurations (mean ± std over their '
        f"{data.spec.search.repeats} repeats)</h2>"
        + _top(*configurations, "configurations", "configurations.csv")
        + "</section>"
    )


def _trials(trials: Table) -> str:
    return (
        '<section id="trials"><h2>Trials</h2>'
        + _top(*trials, "trials", "trials.csv")
        + '<p class="meta">Numbers: <a href="trials.csv">trials.csv</a></p></section>'
    )


def _top(header: list[str], rows: list[list[str]], what: str, csv: str) -> str:
    """The table's first PAGE_ROWS rows, and a line saying how many more there are and where."""
    if len(rows) <= PAGE_ROWS:
        return _table(header, rows)
    where = f' in <a href="{csv}">{csv}</a>'
    more = f'<p class="meta">The top {PAGE_ROWS} of {len(rows)} {what}; the other {len(rows) - PAGE_ROWS}{where}.</p>'
    return _table(header, rows[:PAGE_ROWS]) + more


def _card(card: dict[str, Any]) -> str:
    lo, hi = card["autoattack_acc_95"]
    aa = card["autoattack"]
    rows = [
        ("trial", card["trial"]),
        ("dataset", f"{card['dataset']}, {card['n_examples']} examples"),
        ("threat model", f"{card['threat_model']}, eps {card['eps']:.4g}"),
        ("architecture", card["architecture"]),
        ("training", card["method"]),
        ("extra data", ", ".join(card["extra_data"]) or "none"),
        ("clean accuracy", f"{card['clean_acc']:.2%}"),
        ("AutoAttack accuracy", f"{card['autoattack_acc']:.2%} [{lo:.2%}, {hi:.2%}]"),
        ("AutoAttack", f"{aa['version']} {' '.join(aa['attacks'] or [])}, seed {aa['seed']}, {aa['package']}"),
        ("integrity", card["integrity"] if isinstance(card["integrity"], str) else "; ".join(card["integrity"])),
        ("selection", card.get("selection", "")),
    ]
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows) + "</table>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
