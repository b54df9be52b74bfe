"""Regenerates the tables of docs/findings.md from the stored runs: each sweep's newest run, read
through MLflow with satune's Python API, with its sweep file, commit and parent run id.

    .venv/bin/python docs/findings.py > /tmp/findings-tables.md     # after the sweeps in findings.md ran
    .venv/bin/python docs/findings.py /other/checkout                # sweeps run from another checkout

Every comparison is a verdict (satune.api: the paired t-test over seeds and the pooled per-example
McNemar test), never a reading of means by eye.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from satune.api import Sweep, load
from satune.report.fetch import param_value
from satune.sweep.summary import SweepResult, transfer_matrix

ROOT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
REPORTED = "final/aa_acc"


def provenance(sweep: Sweep, file: str) -> str:
    tags = sweep.data.tags
    sha = tags.get("git.sha", "unknown")[:10] + (" (uncommitted changes)" if tags.get("git.dirty") == "true" else "")
    return (
        f"`{file}`, run `{sweep.data.parent_name}`, MLflow parent run `{sweep.parent_run_id}`, git {sha}, "
        f"{len(sweep.data.finished)} trials; the best chosen by {sweep.selection}."
    )


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def column(rows, key: str) -> list[float]:
    return [r[key] for r in rows if key in r and r[key] == r[key]]  # (NaN: not logged)


def verdict(v: dict[str, Any] | None, first: str = "first") -> str:
    if v is None:
        return "-"
    interval = f" [{v['diff_lo']:+.3f}, {v['diff_hi']:+.3f}]" if v["diff_lo"] is not None else ""
    seeds = f", p(seeds) {v['p_seeds']:.2g}" if v["p_seeds"] is not None else ""
    examples = f", p(examples) {v['p_examples']:.2g}" if v["p_examples"] is not None else ""
    said = v["verdict"].replace("first", first, 1)
    return f"{v['mean_diff']:+.3f}{interval} over {v['pairs']} seeds{seeds}{examples}: **{said}**"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def weighting(out: list[str]) -> None:
    sweep = load(ROOT / "sweeps" / "wA.yaml")
    trials = sweep.trials().to_dict("records")
    out += ["## `wA.yaml`", "", provenance(sweep, "sweeps/wA.yaml"), ""]
    rows = []
    for w in ("vanilla", "balanced", "overemphasized"):
        mine = [t for t in trials if t["method.weighting"] == w]
        rows.append(
            [
                w,
                str(len(mine)),
                stats(column(mine, REPORTED)),
                stats(column(mine, "eval/pgd_acc")),
                stats(column(mine, "eval/clean_acc")),
                stats(column(mine, "proxy/pgd_acc")),
            ]
        )
    out += [
        table(["weighting", "seeds", "final/aa_acc", "eval/pgd_acc", "eval/clean_acc", "proxy/pgd_acc (select)"], rows),
        "",
    ]
    for w in ("balanced", "overemphasized"):
        for metric in (REPORTED, "eval/clean_acc"):
            v = sweep.compare({"method.weighting": w}, {"method.weighting": "vanilla"}, metric=metric)
            out.append(f"- {w} − vanilla, {metric}: {verdict(v, w)}")
    out += ["", f"Verdicts against the best ({sweep.comparison.best.config if sweep.comparison.best else '-'}):", ""]
    for v in sweep.verdicts().to_dict("records"):
        out.append(f"- against {v['other.method.weighting']}: {verdict(v, 'best')}")
    out.append("")


def ratio(out: list[str]) -> None:
    sweep = load(ROOT / "sweeps" / "ratio_esat.yaml")
    trials = sweep.trials().to_dict("records")
    out += ["## `ratio_esat.yaml`", "", provenance(sweep, "sweeps/ratio_esat.yaml"), ""]
    rankings = ("entropy_hardest", "random", "entropy_easiest")
    fractions = sorted({t["method.fraction"] for t in trials})
    rows = []
    for f in fractions:
        cells = [
            stats(column([t for t in trials if t["method.fraction"] == f and t["method.ranking"] == r], REPORTED))
            for r in rankings
        ]
        clean = [
            stats(
                column([t for t in trials if t["method.fraction"] == f and t["method.ranking"] == r], "eval/clean_acc")
            )
            for r in rankings
        ]
        rows.append([str(f), *cells, *clean])
    out += [table(["f", *(f"{r}: {REPORTED}" for r in rankings), *(f"{r}: clean" for r in rankings)], rows), ""]
    for f in fractions:
        for other in ("random", "entropy_easiest"):
            v = sweep.compare(
                {"method.fraction": f, "method.ranking": "entropy_hardest"},
                {"method.fraction": f, "method.ranking": other},
                metric=REPORTED,
            )
            out.append(f"- f = {f}, hardest − {other}: {verdict(v, 'hardest')}")
    out.append("")


def matrix(out: list[str]) -> None:
    sweep = load(ROOT / "sweeps" / "csat_matrix.yaml")
    out += ["## `csat_matrix.yaml`", "", provenance(sweep, "sweeps/csat_matrix.yaml"), ""]
    found = transfer_matrix(sweep.spec, SweepResult(sweep.data.run_dir, sweep.data.rows, None))
    if found is not None:
        title, header, rows = found
        out += [title, "", table(header, rows), ""]


def transfer(out: list[str]) -> None:
    sweep = load(ROOT / "sweeps" / "transfer.yaml")
    sources = load(ROOT / "sweeps" / "transfer_sources.yaml")
    out += [
        "## `transfer_sources.yaml`, `transfer.yaml`",
        "",
        provenance(sources, "sweeps/transfer_sources.yaml"),
        provenance(sweep, "sweeps/transfer.yaml"),
        "",
    ]
    trials = sweep.trials().to_dict("records")
    by_source = {s: {k: param_value(v) for k, v in p.items()} for s, p in sweep.data.sources.items()}
    metric = "eval/aa_acc"
    fractions = sorted({p["method.fraction"] for p in by_source.values()})
    rows = []
    for f in fractions:
        cells = []
        for w in ("vanilla", "overemphasized"):
            mine = [
                t
                for t in trials
                if by_source[t["method.source"]]["method.fraction"] == f
                and by_source[t["method.source"]]["method.weighting"] == w
            ]
            src = [
                t
                for t in sources.trials().to_dict("records")
                if t["method.fraction"] == f and t["method.weighting"] == w
            ]
            cells += [
                stats(column(mine, metric)),
                stats(column(mine, "eval/clean_acc")),
                stats(column(src, "eval/pgd_acc")),
            ]
        rows.append([str(f), *cells])
    header = [
        "source f",
        *(
            f"{w}: {h}"
            for w in ("vanilla", "over-emphasised")
            for h in ("transferred eval/aa_acc", "transferred clean", "source eval/pgd_acc")
        ),
    ]
    out += [table(header, rows), ""]
    for f in fractions:
        v = sweep.compare(
            {"source.method.fraction": f, "source.method.weighting": "overemphasized"},
            {"source.method.fraction": f, "source.method.weighting": "vanilla"},
            metric=metric,
            pair_by="source.repeat",
        )
        out.append(
            f"- f = {f}, over-emphasised − vanilla sources, transferred {metric}: {verdict(v, 'over-emphasised')}"
        )
    out.append("")


def main() -> None:
    out: list[str] = ["# Tables of docs/findings.md, regenerated from the stored runs", ""]
    for section in (weighting, ratio, matrix, transfer):
        section(out)
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
