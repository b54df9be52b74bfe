"""Is the best configuration better than the others, or within noise? The one place a sweep's
configurations are compared: the end table, the report, the parent run in MLflow, the result files
and the Python API (satune.api) all read these verdicts. No Ray.

The best configuration is the one chosen on the select slice (summary.best_configuration). It is
compared with every other configuration on the number the sweep reports (the final stage's
AutoAttack where both have it, else the trials' own AutoAttack, else PGD: final-slice numbers,
which only report) in two ways:

- over seeds: repeat r of every configuration trains with the same seed, so the differences
  best - other pair up by repeat; their mean, 95 % t interval and paired t-test speak to whether
  the lead would survive other seeds;
- over examples: the per-example outcomes of each pair of repeats on the same final-slice
  examples, pooled over the repeats (the discordant counts summed: the stratified McNemar test),
  speak to the noise of the evaluation sample only.

A lead neither test supports is "within noise". A sweep without repeats cannot tell a difference
between configurations from seed noise, and says so.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satune import tracking
from satune.specs import SweepSpec
from satune.stats import ALPHA, PairedT, mcnemar_p, paired_t
from satune.sweep.shown import shown
from satune.sweep.summary import (
    REPEAT_KEY,
    Configuration,
    TrialRow,
    best_configuration,
    configurations,
    p_value,
    ranked,
    selection,
)
from satune.tracking.tags import VERDICT_TAG_PREFIX, VERDICTS_TAG

# The reported numbers a comparison may use, most trustworthy first, with the outcome file's column.
REPORTED = (("final/aa_acc", "aa"), ("eval/aa_acc", "aa"), ("eval/pgd_acc", "pgd"))
WITHIN_NOISE = "within noise"

# (trial row, reported metric) -> that trial's per-example column on the final slice: "1" right, "0"
# wrong, "" not evaluated; None where the outcomes are not at hand.
OutcomeReader = Callable[[TrialRow, str], list[str] | None]


@dataclass(frozen=True)
class Verdict:
    """The best configuration against one other, on one reported metric."""

    other: str  # the other configuration's key (config id)
    metric: str
    differences: list[float]  # best - other, one per repeat both have
    seeds: PairedT | None  # the paired t-test over those repeats (None below two)
    examples: int = 0  # shared final-slice examples, pooled over the repeats
    best_only: int = 0  # ... on which only the best configuration's model was right
    other_only: int = 0
    p_examples: float | None = None  # exact McNemar on the pooled discordant examples
    subject: str = "best"  # what the verdict calls the first side ("first" for any two configurations)

    @property
    def mean(self) -> float:
        return sum(self.differences) / len(self.differences)

    @property
    def supported_by(self) -> str | None:
        """Which test puts the difference beyond noise: seeds (the claim a paper makes), examples
        (the evaluation sample's noise only), or none."""
        if self.seeds is not None and self.seeds.p < ALPHA:
            return "seeds"
        if self.p_examples is not None and self.p_examples < ALPHA:
            return "examples"
        return None

    @property
    def verdict(self) -> str:
        if self.supported_by is None:
            return WITHIN_NOISE
        who = f"{self.subject} {'ahead' if self.mean > 0 else 'behind'}"
        return f"{who}, beyond seed noise" if self.supported_by == "seeds" else f"{who} on these examples only"

    def record(self) -> dict[str, Any]:
        s = self.seeds
        return {
            "other": self.other,
            "metric": self.metric,
            "pairs": len(self.differences),
            "mean_diff": self.mean,
            "diff_lo": s.lo if s else None,
            "diff_hi": s.hi if s else None,
            "p_seeds": s.p if s else None,
            "examples": self.examples,
            "best_only": self.best_only,
            "other_only": self.other_only,
            "p_examples": self.p_examples,
            "verdict": self.verdict,
            "differences": self.differences,
        }


@dataclass
class Comparison:
    """A sweep's configurations against its best: the verdicts, and what limits them."""

    best: Configuration | None
    chosen_on: str  # the search's first metric: what chose the best (the select slice, unless optimistic)
    optimistic: bool  # search.select_on: final
    selection: str = ""  # where the choice was made, as every report of it says (summary.selection)
    verdicts: list[Verdict] = field(default_factory=list)
    note: str | None = None  # why there are no verdicts, or what they cannot say
    others: dict[str, Configuration] = field(default_factory=dict)  # key -> configuration

    def records(self) -> dict[str, Any]:
        """verdicts.json: what the parent run, the result files and the API hold."""
        return {
            "best": self.best.key if self.best else None,
            "best_config": self.best.config if self.best else None,
            "chosen_on": self.chosen_on,
            "selection": self.selection,
            "optimistic": self.optimistic,
            "note": self.note,
            "verdicts": [v.record() | {"other_config": self.others[v.other].config} for v in self.verdicts],
        }


def compare(sweep: SweepSpec, rows: list[TrialRow], outcomes: OutcomeReader | None = None) -> Comparison:
    """The best configuration (on the select slice) against each other, best-ranked first."""
    metric = sweep.search.metrics[0]
    finished = [r for r in rows if r.status == "TERMINATED"]
    best_row, _ = best_configuration(sweep, finished)
    groups = configurations(finished)
    best = next((g for g in groups if best_row is not None and best_row in g.rows), None)
    out = Comparison(best, metric, sweep.search.select_on == "final", selection(sweep, best_row))
    if best is None:
        out.note = "no finished trial reports the search's metric: nothing to compare"
        return out
    others = ranked(
        [g for g in groups if g is not best], lambda g: g.mean(metric), sweep.search.modes[0], tie=lambda g: g.key
    )
    out.others = {g.key: g for g in others}
    if not others:
        out.note = "one configuration: nothing to compare it with"
    elif sweep.search.repeats == 1:
        out.note = (
            "one seed per configuration: a difference between configurations cannot be told from seed "
            "noise (search.repeats: 3 or more)"
        )
    elif sweep.search.seeds == "per_config":
        out.note = "search.seeds: per_config trains each configuration with other seeds: no paired verdict over seeds"
    for g in others:
        verdict = _versus(best, g, outcomes, paired=sweep.search.seeds == "shared")
        if verdict is not None:
            out.verdicts.append(verdict)
    return out


def _versus(best: Configuration, other: Configuration, outcomes: OutcomeReader | None, paired: bool) -> Verdict | None:
    mine, theirs = _by_repeat(best), _by_repeat(other)
    shared = sorted(set(mine) & set(theirs)) if paired else []
    return versus([(mine[r], theirs[r]) for r in shared], outcomes, other.key)


def versus(
    pairs: list[tuple[TrialRow, TrialRow]],
    outcomes: OutcomeReader | None,
    other: str = "",
    metrics: tuple[str, ...] | None = None,
    subject: str = "best",
) -> Verdict | None:
    """One verdict over pairs of trials trained with the same seed (first - second), on the most
    trustworthy reported number (or the first of `metrics`) that every trial of the pairs has."""
    for metric, column in REPORTED if metrics is None else [(m, dict(REPORTED).get(m, "")) for m in metrics]:
        if not pairs or not all(metric in a.metrics and metric in b.metrics for a, b in pairs):
            continue
        diffs = [a.metrics[metric] - b.metrics[metric] for a, b in pairs]
        pooled = _pooled(pairs, metric, column, outcomes) if column else None
        seeds = paired_t(diffs)
        if pooled is None:
            return Verdict(other, metric, diffs, seeds, subject=subject)
        n, b, c = pooled
        return Verdict(other, metric, diffs, seeds, n, b, c, mcnemar_p(b, c), subject)
    return None


def _by_repeat(g: Configuration) -> dict[int, TrialRow]:
    return {int(r.config.get(REPEAT_KEY, 0)): r for r in g.rows}


def _pooled(
    pairs: list[tuple[TrialRow, TrialRow]], metric: str, column: str, outcomes: OutcomeReader | None
) -> tuple[int, int, int] | None:
    """Shared examples, and those only the first / only the second got right, summed over the pairs."""
    if outcomes is None:
        return None
    n = b = c = 0
    for a, o in pairs:
        mine, theirs = outcomes(a, metric), outcomes(o, metric)
        if mine is None or theirs is None or len(mine) != len(theirs):
            return None  # not the same examples (or not at hand): no pooled test
        both = [(x, y) for x, y in zip(mine, theirs, strict=True) if x and y]
        n += len(both)
        b += sum(x == "1" and y == "0" for x, y in both)
        c += sum(x == "0" and y == "1" for x, y in both)
    return n, b, c


def verdict_table(sweep: SweepSpec, comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """One line per other configuration, closest on the select slice first: the end table's, the
    report's and tables.md's."""
    keys = [*sweep.search.grid, *sweep.search.space]
    rows = []
    for v in comparison.verdicts:
        config = comparison.others[v.other]
        name = v.other + (f" (trial {config.rows[0].trial_id})" if sweep.search.repeats == 1 else "")
        interval = f" [{v.seeds.lo:+.4f}, {v.seeds.hi:+.4f}]" if v.seeds else ""
        rows.append(
            [
                name,
                *(shown(config.config.get(k)) for k in keys),
                v.metric,
                f"{v.mean:+.4f}{interval}",
                str(len(v.differences)),
                p_value(v.seeds.p if v.seeds else None),
                p_value(v.p_examples) + (f" (n={v.examples})" if v.examples else ""),
                v.verdict,
            ]
        )
    header = ["against", *keys, "metric", "best - this [95 %]", "seeds", "p (seeds)", "p (examples)", "verdict"]
    return header, rows


# --------------------------------------------------------------------------------------------
# The outcomes, read from the trials' MLflow runs


def outcome_file(metric: str, final_labels: list[str]) -> str | None:
    """The artifact holding the outcomes behind `metric`: the newest final-stage evaluation's, or
    the trial's own."""
    if metric.startswith("final/"):
        return f"final/{final_labels[-1]}/outcomes.csv" if final_labels else None
    return "outcomes.csv"


def final_labels(paths: list[str]) -> list[str]:
    """The labels of a run's final-stage evaluations (`final/<label>/card.json`), oldest first."""
    labels = {p.split("/")[1] for p in paths if p.startswith("final/") and p.endswith("/card.json")}
    return sorted(labels, key=lambda s: int(s.split("-")[0]) if s.split("-")[0].isdigit() else 0)


def outcome_column(text: str, name: str) -> list[str] | None:
    rows = list(csv.DictReader(io.StringIO(text)))
    return [r[name] or "" for r in rows] if rows and name in rows[0] else None


def mlflow_outcomes(uri: str, run_ids: dict[str, str]) -> OutcomeReader:
    """An OutcomeReader over the trials' runs (trial id -> run id), each file fetched once."""
    texts: dict[tuple[str, str], str | None] = {}

    def read(row: TrialRow, metric: str) -> list[str] | None:
        run_id = run_ids.get(row.trial_id)
        if run_id is None:
            return None
        labels = final_labels(tracking.artifact_paths(uri, run_id, "final")) if metric.startswith("final/") else []
        name = outcome_file(metric, labels)
        if name is None:
            return None
        if (run_id, name) not in texts:  # (a run without the file: no per-example test for it)
            texts[run_id, name] = tracking.read_artifact(uri, run_id, name)
        text = texts[run_id, name]
        return None if text is None else outcome_column(text, dict(REPORTED)[metric])

    return read


# --------------------------------------------------------------------------------------------
# Into the sweep's parent run and its run folder


def log(comparison: Comparison, uri: str, parent: str, directory: Path) -> None:
    """verdicts.json (beside sweep.json and in the parent run), a tag per verdict that reads as a
    sentence, and each difference and p as metrics of the parent run (verdict/<config>/...)."""
    records = comparison.records()
    (directory / "verdicts.json").write_text(json.dumps(records, indent=2) + "\n")
    tracking.log_dict(uri, parent, records, "verdicts.json")
    tags: dict[str, object] = {
        VERDICTS_TAG: comparison.note
        or f"{len(comparison.verdicts)} configurations against the best, chosen by {comparison.selection}"
    }
    metrics: dict[str, float] = {}
    for v in comparison.verdicts:
        tags[VERDICT_TAG_PREFIX + v.other] = sentence(v)
        metrics[f"verdict/{v.other}/diff"] = v.mean
        if v.seeds is not None:
            metrics |= {
                f"verdict/{v.other}/diff_lo": v.seeds.lo,
                f"verdict/{v.other}/diff_hi": v.seeds.hi,
                f"verdict/{v.other}/p_seeds": v.seeds.p,
            }
        if v.p_examples is not None:
            metrics[f"verdict/{v.other}/p_examples"] = v.p_examples
    tracking.set_tags(uri, parent, tags)
    if metrics:
        tracking.log_metrics(uri, parent, metrics)


def sentence(v: Verdict) -> str:
    """`within noise: final/aa_acc +0.012 [-0.031, +0.055] over 5 seeds (p 0.41); 1885 examples (p 0.30)`."""
    parts = [f"{v.verdict}: {v.metric} best - this {v.mean:+.4f}"]
    if v.seeds is not None:
        parts.append(f" [{v.seeds.lo:+.4f}, {v.seeds.hi:+.4f}] over {v.seeds.n} seeds (p {v.seeds.p:.2g})")
    else:
        parts.append(f" over {len(v.differences)} seed")
    if v.p_examples is not None:
        parts.append(f"; {v.examples} paired examples (p {v.p_examples:.2g})")
    return "".join(parts)
