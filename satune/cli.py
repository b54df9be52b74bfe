"""The `satune` command. Parses, loads, calls, prints: no logic of its own. What a command selects,
writes or serves lives below it: `sweep.ending` (what a finished sweep shows, as data),
`sweep.evaluation` (`satune eval`), `sweep.run_folder` (`satune run`), `sweep.compare` (`satune ui`).

A user mistake (bad sweep file, bad --set, missing dataset files) exits with code 2 and one line per
problem naming the YAML path; it never shows a traceback.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from satune.errors import UserError
from satune.specs import SpecError, absolutize_trial, apply_overrides, interval_keys, load_sweep, parse_trial
from satune.sweep.shown import shown

if TYPE_CHECKING:
    from collections.abc import Iterable

    from satune.specs import SweepSpec
    from satune.specs.final import Settings
    from satune.sweep.ending import Ending

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sweeps for adversarial-training research (SAT, BiaMAT) on Ray Tune, Optuna and MLflow.",
)
# Into a file or a CI log (not a terminal), tables keep their columns whole instead of 80 wide.
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


class OptionError(UserError):
    """A command-line option that cannot be honoured."""


def user_errors(fn: Callable) -> Callable:
    """Every mistake a user can fix, from any layer, ends here: its lines, exit 2, no traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            for line in str(exc).splitlines():
                _error(line)
            raise typer.Exit(2) from None

    return wrapper


def _say(line: str) -> None:
    out.print(line, highlight=False)


def _error(line: str) -> None:
    # Text, not markup: paths like aux[0] must print as they are.
    err.print(Text("error: ", style="red") + Text(line), highlight=False, soft_wrap=True)


def _logging(verbose: bool) -> None:
    handler = RichHandler(console=err, show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("satune").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("auto-attack", "botocore", "aiobotocore", "s3fs"):  # (S3 clients say where credentials came from)
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


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
                _error(line)
            continue
        out.print(
            f"{f}: ok ({sweep.trial.method.kind}, {len(sweep.search.grid)} grid axes, {len(sweep.search.space)} searched, "
            f"{sweep.search.trial_count} trials)",
            highlight=False,
        )
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
    from satune.sweep.run_folder import run_folder

    sweep = load_sweep(file)
    overridden = apply_overrides(sweep.trial.model_dump(exclude_unset=True, by_alias=True), set_ or [])
    trial = absolutize_trial(parse_trial(overridden, str(file)), Path.cwd())
    folder = run_folder(sweep, out_dir, resume)
    _logging(verbose)

    from satune.trial import run_trial

    try:
        result = run_trial(
            trial, on_epoch=_progress(trial.train.epochs), checkpoint=folder.checkpoint, workdir=folder.path
        )
    except KeyboardInterrupt:
        again = folder.resume_command(file, set_ or [])
        err.print(f"interrupted: continue from the last finished epoch with `{again}`", highlight=False)
        raise typer.Exit(130) from None
    written = folder.write(result)
    for problem in result.integrity:
        err.print(f"warning: evaluation integrity: {problem}", highlight=False)
    _summary(result.metrics)
    out.print(f"result: {written}  (per-example outcomes: outcomes.csv)", highlight=False)


@app.command()
@user_errors
def sweep(
    file: Annotated[Path, typer.Argument(help="The sweep file.")],
    resume: Annotated[
        bool, typer.Option(help="Continue the newest unfinished run of this sweep from storage.")
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster (default: SATUNE_RAY_ADDRESS, else a private local Ray).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and print the trial plan; start nothing.")
    ] = False,
    report: Annotated[
        bool, typer.Option(help="Draw the report at the end (`satune report`): figures, numbers, model cards.")
    ] = True,
    plain: Annotated[
        bool, typer.Option("--plain", envvar="SATUNE_PLAIN", help="Plain progress lines instead of the live table.")
    ] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Run a sweep: Ray Tune runs the trials, Optuna proposes them, MLflow records them.

    Progress is a live table of the trials on a terminal; one line per trial event in a log or pipe,
    with TERM=dumb, or with --plain."""
    spec = load_sweep(file)
    from satune.sweep.plan import plan_lines  # no Ray, no torch: a dry run costs what validation costs

    for line in plan_lines(spec):
        out.print(line, highlight=False)
    if dry_run:
        from satune.specs.datafiles import missing_data

        for line in missing_data(spec.trial):  # the sweep itself refuses these (on a cluster: warns)
            err.print(Text("warning: ", style="yellow") + Text(line), highlight=False, soft_wrap=True)
        return
    _logging(verbose)
    if plain:
        import os

        os.environ["SATUNE_PLAIN"] = "1"  # read where Tune runs: a resumed sweep's callback is Tune's own copy
    from satune.sweep.ending import ending
    from satune.sweep.stopping import SweepInterrupted
    from satune.tune.driver import run_sweep

    again = f"continue with `{shlex.join(['satune', 'sweep', str(file), '--resume'])}`"
    try:
        result = run_sweep(spec, file, resume=resume, address=address, report=_reporter(spec) if report else None)
    except (SweepInterrupted, KeyboardInterrupt) as exc:
        started = isinstance(exc, SweepInterrupted) and exc.run_dir is not None
        err.print(
            f"interrupted: {again}" if started else "interrupted before the sweep started; nothing to resume",
            highlight=False,
        )
        raise typer.Exit(130) from None
    _show_ending(ending(spec, result, file), again)


def _show_ending(end: Ending, again: str) -> None:
    """What a finished sweep shows (`sweep.ending`); exit 130 when it was interrupted, 1 when a trial failed."""
    for table in end.tables:
        out.print(_table(table.title, table.header, table.rows, table.text_columns))
    if end.interrupted:
        err.print(f"interrupted: {again}", highlight=False)
        raise typer.Exit(130)
    for line in end.lines:
        out.print(line, highlight=False)
    if end.command is not None:
        out.print(end.command, highlight=False, soft_wrap=True)
    if end.last is not None:
        out.print(end.last, highlight=False)
    if end.failed:
        raise typer.Exit(1)


def _reporter(spec) -> Callable[[str], None]:
    def draw(uri: str) -> None:
        from satune.report import build_report

        index = build_report(uri, spec.name, echo=lambda m: err.print(m, highlight=False))
        out.print(f"report: {index.resolve().as_uri()}", highlight=False)

    return draw


@app.command()
@user_errors
def report(
    sweep: Annotated[str, typer.Argument(help="A sweep file, or a sweep's name (with --tracking-uri).")],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for index.html, the figures and their CSV files "
            "(default: report/ in the sweep's newest run folder).",
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="For a sweep's name: the MLflow server (default: MLFLOW_TRACKING_URI).")
    ] = None,
    log: Annotated[bool, typer.Option(help="Also log the report into the sweep's parent run.")] = True,
) -> None:
    """Draw a finished sweep's report from MLflow: figures chosen by what the sweep holds, the numbers
    behind each (CSV), model cards; one HTML page that opens from a file, logged into the parent run."""
    import os

    from satune.tracking import serving

    path = Path(sweep)
    spec = load_sweep(path) if path.is_file() else None
    uri = spec.tracking.uri if spec is not None else tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if spec is None and uri is None:
        raise OptionError(f"'{sweep}' is not a file; for a sweep's name pass --tracking-uri")
    from satune.report import build_report

    with serving(uri, spec.storage if spec else "", f"satune sweep {sweep}") as (uri, _):  # local mode: its store
        index = build_report(
            uri, spec.name if spec else sweep, out_dir, echo=lambda m: err.print(m, highlight=False), log=log
        )
    out.print(f"report: {index.resolve().as_uri()}", highlight=False)


@app.command("eval")
@user_errors
def evaluate(
    target: Annotated[
        str, typer.Argument(help="A sweep file (its winners), a `satune run` folder, or an MLflow run id.")
    ],
    version: Annotated[str | None, typer.Option(help="AutoAttack version: standard, plus, rand, custom.")] = None,
    attack: Annotated[
        list[str] | None, typer.Option(help="An attack of a custom version (repeat: --attack apgd-ce --attack apgd-t).")
    ] = None,
    n: Annotated[str | None, typer.Option(help="Final-slice examples to attack: a number, or all.")] = None,
    seed: Annotated[int | None, typer.Option(help="AutoAttack's seed.")] = None,
    norm: Annotated[
        str | None, typer.Option(help="Threat model norm, l2 or linf (default: the trial's evaluation threat).")
    ] = None,
    eps: Annotated[str | None, typer.Option(help="Threat model budget, e.g. 8/255 (default: the trial's).")] = None,
    top_k: Annotated[
        str | None, typer.Option(help="For a sweep: how many winners, or pareto (default: its final_eval).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="For a run id: the MLflow server (default: MLFLOW_TRACKING_URI).")
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """AutoAttack a trained model over the final slice, later: a sweep's winners, a run, or a folder.

    The results go into what is evaluated (the trial's MLflow run, or the folder's final/), with n,
    95 % intervals, per-example outcomes and a RobustBench-style card."""
    from satune.sweep.evaluation import eval_request, evaluations

    options = {"version": version, "attacks": attack, "n": n, "seed": seed, "norm": norm, "eps": eps}
    request = eval_request(target, options, top_k=top_k, tracking_uri=tracking_uri)
    _logging(verbose)
    for title, metrics in evaluations(request, _final_stage):
        out.print(accuracy_table(title, metrics))


def _final_stage(spec: SweepSpec, settings: Settings, top_k: int | str) -> Iterable[tuple[str, dict[str, float]]]:
    """A sweep's winners, evaluated one after the other in this process (`satune eval SWEEP`)."""
    from satune.tune.final_stage import evaluate_sweep

    return evaluate_sweep(spec, settings, top_k=top_k, echo=lambda m: err.print(m, highlight=False))


@app.command()
@user_errors
def ui(
    file: Annotated[Path, typer.Argument(help="A sweep file: compares the trials of its newest run.")],
    port: Annotated[int, typer.Option(help="Port of the MLflow UI (local mode: satune serves the store).")] = 5000,
    optuna_port: Annotated[int, typer.Option(help="Port of optuna-dashboard.")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 unless you mean to expose it.")] = "127.0.0.1",
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the trials in a browser, where there is a display.")
    ] = True,
) -> None:
    """Compare a sweep's trials: the MLflow UI on its newest run's trials (local mode: serving its store), and
    optuna-dashboard on its Optuna studies. Ctrl-C stops both."""
    from satune.sweep.compare import compare

    spec = load_sweep(file)
    try:
        compare(spec, file, host=host, port=port, optuna_port=optuna_port, open_browser=open_browser, echo=_say)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _progress(epochs: int) -> Callable:
    def on_epoch(metrics: dict, _checkpoint) -> None:
        shown = {
            k: metrics[k]
            for k in ("train/loss", "train/acc", "train/adv_acc", "select/clean_acc", "select/pgd_acc")
            if k in metrics
        }
        parts = "  ".join(f"{k.split('/')[1]}={v:.3f}" for k, v in shown.items())
        collapsed = "  robust accuracy collapsed" if metrics.get("select/collapsed") == 1 else ""
        err.print(
            f"epoch {metrics['epoch'] + 1}/{epochs}  {parts}  ({metrics['time/epoch_s']:.1f}s){collapsed}",
            highlight=False,
        )

    return on_epoch


def _summary(metrics: dict) -> None:
    out.print(accuracy_table("final metrics (final slice, selected checkpoint)", metrics))
    rest = (
        "train/selected_epoch",
        "train/collapsed",
        "last/pgd_gap",
        "last/pgd_gap_p",
        "last/overfit",
        "train/grad_evals",
        "time/total_s",
    )
    out.print("  ".join(f"{k} {shown(metrics[k])}" for k in rest if k in metrics), highlight=False)


def _table(title: str, header: list[str], rows: list[list[str]], text_columns: int) -> Table:
    shown = Table(title=title)
    for i, name in enumerate(header):
        shown.add_column(name, justify="left" if i < text_columns else "right")
    for row in rows:
        shown.add_row(*row)
    return shown


def accuracy_table(title: str, metrics: dict) -> Table:
    """Every overall accuracy with its 95 % interval and sample size (per class: in result.json)."""
    table = Table(title=title)
    for name, justify in (("metric", "left"), ("accuracy", "right"), ("95 % interval", "right"), ("n", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key in sorted(k for k in metrics if k.endswith("_acc") and "/class_" not in k and not k.startswith("select/")):
        n, lo, hi = (metrics.get(k) for k in interval_keys(key))
        table.add_row(key, f"{metrics[key]:.4f}", f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "", shown(n))
    return table


def main() -> None:
    app(prog_name="satune")


if __name__ == "__main__":
    main()
