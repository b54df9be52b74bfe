"""What `satune eval` evaluates, as data: its target (a sweep's winners, a `satune run` folder, or a
trial's MLflow run) and the AutoAttack settings its options ask for over the sweep file's. The CLI
resolves a request before it loads anything (each mistake a UserError), then runs it here and prints
each result under its title. No torch and no Ray to import this: `satune.final` loads when a request
runs, and the final stage of a sweep (Ray's) is handed in by the CLI."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satune.errors import UserError
from satune.specs import SweepSpec, load_sweep, parse_final_settings
from satune.specs.final import Settings

# A sweep's winners, evaluated: (trial id, metrics) for each, as it ends. `satune.tune.final_stage`.
FinalStage = Callable[[SweepSpec, Settings, int | str], Iterable[tuple[str, dict[str, float]]]]


class EvalOptionError(UserError):
    """A target or an option of `satune eval` that cannot be honoured."""


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate, and with what: a sweep's `top_k` winners, a `satune run` folder, or the
    MLflow run `run_id` on the server `uri`; exactly one of `sweep`, `folder`, `run_id` is set."""

    settings: Settings
    sweep: SweepSpec | None = None
    top_k: int | str = 1
    folder: Path | None = None
    run_id: str | None = None
    uri: str | None = None


def eval_request(target: str, options: dict[str, Any], *, top_k: str | None, tracking_uri: str | None) -> EvalRequest:
    """`satune eval`'s arguments as a request. `options`: version, attacks, n (a number, or all), seed,
    norm, eps as given, None where unset; those left unset come from the sweep file's final_eval, else
    from the defaults."""
    given = {k: _count(v) if k == "n" else v for k, v in options.items() if v is not None}
    path = Path(target)
    sweep = load_sweep(path) if path.is_file() else None
    base = sweep.final_eval.autoattack if sweep and sweep.final_eval else None
    aa, threat = parse_final_settings(given, base)
    settings = Settings(aa, threat.norm, threat.eps)
    if sweep is not None:
        k: int | str = (int(top_k) if top_k and top_k.isdigit() else top_k) or (
            sweep.final_eval.top_k if sweep.final_eval else 1
        )
        return EvalRequest(settings, sweep=sweep, top_k=k)
    if path.is_dir():
        if not (path / "result.json").exists() or not (path / "checkpoint" / "state.pt").exists():
            raise EvalOptionError(f"{path} is not a `satune run` folder (no result.json and checkpoint/)")
        return EvalRequest(settings, folder=path)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        raise EvalOptionError(f"'{target}' is neither a file nor a folder; for a run id pass --tracking-uri")
    return EvalRequest(settings, run_id=target, uri=uri)


def _count(n: str) -> int | str:
    """--n: a number of final-slice examples, or all."""
    if n == "all":
        return n
    try:
        return int(n)
    except ValueError:
        raise EvalOptionError(f"--n: must be a number of examples or all, got {n!r}") from None


def evaluations(request: EvalRequest, final_stage: FinalStage) -> Iterator[tuple[str, dict[str, float]]]:
    """Run `request`: each evaluation's title and metrics, as it ends. The results go into what is
    evaluated (the trial's MLflow run, or the folder's final/)."""
    from satune.final import evaluate_dir, evaluate_run  # torch: only once the request is known to be good

    if request.sweep is not None:
        for trial_id, metrics in final_stage(request.sweep, request.settings, request.top_k):
            yield f"trial {trial_id}", metrics
    elif request.folder is not None:
        done = evaluate_dir(request.folder, request.settings)
        yield f"{request.folder} (results in {request.folder / 'final'})", done.metrics
    else:
        assert request.uri is not None and request.run_id is not None
        from satune.tracking import check_reachable

        check_reachable(request.uri)
        yield f"run {request.run_id}", evaluate_run(request.uri, request.run_id, request.settings)
