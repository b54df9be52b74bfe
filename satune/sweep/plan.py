"""The plan `satune sweep --dry-run` prints (and every sweep prints first). No Ray, no torch: a
dry run costs what validating the file costs."""

from __future__ import annotations

from satune.specs import RunsOf, SweepSpec


def plan_lines(sweep: SweepSpec) -> list[str]:
    s, r, t = sweep.search, sweep.resources, sweep.trial
    objective = ", ".join(f"{m} ({mode})" for m, mode in zip(s.metrics, s.modes, strict=True))
    cells = len(s.cells())
    shape = " x ".join(
        [f"{cells} grid cells"] * (cells > 1)
        + [f"{s.configurations // cells} configurations"]
        + [f"{s.repeats} repeats"] * (s.repeats > 1)
    )
    lines = [
        f"sweep {sweep.name}: {s.trial_count} trials ({shape}) of {t.method.kind} on {t.data.dataset}, "
        f"{t.train.epochs} epochs each, "
        + (f"{s.algorithm} search for {objective}" if s.space else f"ranked by {objective}"),
        f"resources: {r.cpu:g} cpu, {r.gpu:g} gpu per trial, at most {r.max_concurrent} at once, "
        f"{sweep.max_failures} retries from the last checkpoint",
        f"scheduler: {sweep.scheduler.kind}"
        + (f" on {sweep.scheduler.metric}" if sweep.scheduler.kind != "none" else ""),
        f"tracking: {sweep.tracking.uri or 'a local MLflow server on SQLite'}, experiment "
        f"'{sweep.tracking.experiment or sweep.name}'; storage {sweep.storage}",
    ]
    for key, values in s.grid.items():
        shown = (
            f"every finished trial of sweep '{values.runs_of}' (found at start)"
            if isinstance(values, RunsOf)
            else values
        )
        lines.append(f"  grid {key}: {shown}")
    for key, dom in s.space.items():
        lines.append(f"  search {key}: {dom.kind} {dom.value}")
    if sweep.final_eval is not None:
        aa = sweep.final_eval.autoattack
        lines.append(
            f"final evaluation: AutoAttack {aa.version} on {aa.n} final-slice examples of the top "
            f"{sweep.final_eval.top_k}"
        )
    return lines
