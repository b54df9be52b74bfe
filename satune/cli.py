"""The `satune` command. Parses, loads, calls: no logic of its own.

A user mistake (bad sweep file, bad --set, missing dataset files) exits with code 2 and one line per
problem naming the YAML path; it never shows a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from satune.specs import SpecError, apply_overrides, load_sweep, parse_trial

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sweeps for adversarial-training research (SAT, BiaMAT) on Ray Tune, Optuna and MLflow.")  # fmt: skip
err = Console(stderr=True)
out = Console()


class UserError(Exception):
    """Something the user can fix; printed as is, exit code 2."""


def user_errors(fn: Callable) -> Callable:
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            for line in str(exc).splitlines():
                err.print(f"[red]error:[/red] {line}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except UserError as exc:
            err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _logging(verbose: bool) -> None:
    handler = RichHandler(console=err, show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("satune").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("auto-attack").setLevel(logging.DEBUG if verbose else logging.WARNING)


@app.command()
@user_errors
def validate(files: Annotated[list[Path], typer.Argument(help="Sweep files to check.")]) -> None:
    """Check sweep files without running anything: exit 0 when all are valid, 2 otherwise."""
    failed = False
    for f in files:
        try:
            sweep = load_sweep(f)
        except SpecError as exc:
            failed = True
            for line in str(exc).splitlines():
                err.print(f"[red]error:[/red] {line}", markup=True, highlight=False, soft_wrap=True)
            continue
        out.print(f"{f}: ok ({sweep.trial.method.kind}, {len(sweep.search.space)} searched, "
                  f"{sweep.search.num_samples} trials)", highlight=False)  # fmt: skip
    if failed:
        raise typer.Exit(2)


@app.command()
@user_errors
def run(
    file: Annotated[Path, typer.Argument(help="Sweep file whose base trial to run (its search is ignored).")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a trial field: key=value (YAML value).")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where result.json and the checkpoint go.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Run one trial without Ray or MLflow and write DIR/result.json."""
    sweep = load_sweep(file)
    trial = parse_trial(
        apply_overrides(sweep.trial.model_dump(exclude_unset=True, by_alias=True), set_ or []), str(file)
    )
    target = (out_dir or Path(sweep.storage) / sweep.name / time.strftime("run-%Y%m%d-%H%M%S")).resolve()
    checkpoint = target / "checkpoint"
    if resume and not (checkpoint / "state.pt").exists():
        raise UserError(f"--resume: no checkpoint in {target}")
    _logging(verbose)

    from satune.data import DataError
    from satune.trial import run_trial

    try:
        result = run_trial(trial, on_epoch=_progress(trial.train.epochs), checkpoint=checkpoint if resume else None,
                           workdir=target)  # fmt: skip
    except DataError as exc:
        raise UserError(str(exc)) from None
    target.mkdir(parents=True, exist_ok=True)
    (target / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    _summary(result.metrics)
    out.print(f"result: {target / 'result.json'}", highlight=False)


def _progress(epochs: int) -> Callable:
    def on_epoch(metrics: dict, _checkpoint) -> None:
        shown = {
            k: metrics[k]
            for k in ("train/loss", "train/acc", "train/adv_acc", "select/clean_acc", "select/pgd_acc")
            if k in metrics
        }
        parts = "  ".join(f"{k.split('/')[1]}={v:.3f}" for k, v in shown.items())
        err.print(f"epoch {metrics['epoch'] + 1}/{epochs}  {parts}  ({metrics['time/epoch_s']:.1f}s)", highlight=False)

    return on_epoch


def _summary(metrics: dict) -> None:
    table = Table(title="final metrics (final slice, selected checkpoint)", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        if key.startswith("eval/") and "/class_" not in key or key in ("train/grad_evals", "time/total_s"):
            table.add_row(key, f"{metrics[key]:.4f}" if isinstance(metrics[key], float) else str(metrics[key]))
    out.print(table)


def main() -> None:
    app(prog_name="satune")


if __name__ == "__main__":
    sys.exit(main())
