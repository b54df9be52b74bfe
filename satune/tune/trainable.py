"""The Tune trainable: one trial in its own actor, wrapping trial.run_trial with reporting.

It validates its sampled config back into a TrialSpec (model_validate, never model_copy), derives
the trial's seed, opens (or re-opens) the trial's MLflow child run, restores from Tune's checkpoint,
and reports every epoch to Tune and MLflow. The MLflow run id travels inside each checkpoint.
The actor is a `SatuneTrial` named after its trial on the Ray dashboard, and exports its progress
as Ray metrics (satune.tune.metrics).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satune import tracking
from satune.seeds import derive_seed
from satune.specs import SweepSpec, TrialSpec, set_path
from satune.sweep import trial_runs
from satune.sweep.summary import REPEAT_KEY, tune_metrics
from satune.tracking.tags import (
    ACTOR_TAG,
    COLLAPSED_TAG,
    CONFIG_TAG,
    NODE_TAG,
    OVERFITTING_TAG,
    REPEAT_TAG,
    RESUMED_TAG,
)
from satune.tune.metrics import TrialGauges, describe

if TYPE_CHECKING:
    from satune.trial import TrialResult

META_FILE = "meta.json"


class InjectedFailure(RuntimeError):
    """Raised on purpose by fault-injection tests (SATUNE_FAIL_AT_EPOCH)."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs from the driver (small and picklable)."""

    base: dict  # the base trial, as given in the sweep file
    sweep_seed: int
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int
    seeds: str = "shared"  # search.seeds
    fail_at_epoch: int | None = None  # fault injection: raise once after this epoch's report
    sweep: str = ""  # the sweep's name, and the per-epoch metric its scheduler compares trials by:
    proxy: str = "select/pgd_acc"  # (trial_trainable sets both) for the trial's Ray metrics
    told: tuple[str, ...] = ()  # what the final report tells Tune (summary.tune_metrics; set there too)


def trial_trainable(ctx: TrialContext, sweep: SweepSpec, resources: Any) -> type:
    """The class Tune runs each trial in, with the `resources` of `tune.with_resources`: `run`,
    wrapped as Tune wraps any function trainable, in a subclass that the Ray dashboard lists as
    `SatuneTrial` (not Tune's anonymous `ImplicitFunc`), with a repr that names the trial and its
    configuration. Ray records that repr once the actor's __init__ has run, when Tune has handed it
    the trial's id and config. (Resources go on the function, before it is wrapped: on the class,
    Tune would subclass it again, and Ray would list that subclass's name.) Tune's name for the
    trainable stays `run`, which a sweep started before this class existed saved for --resume."""
    from ray import tune
    from ray.tune.trainable import wrap_function

    ctx = replace(ctx, sweep=sweep.name, proxy=sweep.scheduler.metric, told=tuple(tune_metrics(sweep)))
    # Ray takes the repr once: an actor Tune reuses keeps its first trial's, so it says so.
    reused = " (the first of this actor's trials, resources.reuse_actors)" if sweep.resources.reuse_actors else ""
    function = tune.with_resources(partial(run, ctx=ctx), resources)

    class SatuneTrial(wrap_function(function, name="run")):  # type: ignore[misc]
        def __repr__(self) -> str:  # (asked for before __init__ has run, it gives the class name)
            try:
                return describe(ctx.sweep, self.trial_id, self.config) + reused
            except AttributeError:
                return type(self).__name__

    SatuneTrial.__qualname__ = SatuneTrial.__name__  # Ray lists the qualified name
    return SatuneTrial


def resolve_trial(ctx: TrialContext, config: dict[str, Any]) -> TrialSpec:
    """The sampled values merged into the base trial, with the trial's seed and thread count."""
    config = dict(config)
    repeat = config.pop(REPEAT_KEY, 0)
    trial = ctx.base
    for key, value in sorted(config.items()):
        trial = set_path(trial, key, value)
    if "seed" not in config:  # a searched seed (seed replicates) is used as it is
        values = json.dumps(config, sort_keys=True) if ctx.seeds == "per_config" else ""
        trial = set_path(trial, "seed", derive_seed(ctx.sweep_seed, values, repeat))
    if ctx.base.get("runtime", {}).get("threads") is None:
        trial = set_path(trial, "runtime.threads", ctx.threads)
    return TrialSpec.model_validate(trial)


def run(config: dict[str, Any], ctx: TrialContext) -> None:
    """One trial in its actor: restore (Tune's checkpoint, the MLflow run) -> epochs (each to Tune,
    then MLflow) -> publish (the final report, artifacts and tags; the run ends FINISHED)."""
    # Imported here: the driver imports this module too, and never needs torch.
    from ray import tune

    from satune.trial import run_trial

    spec = resolve_trial(ctx, config)
    trial_id = tune.get_context().get_trial_id()
    checkpoint = tune.get_checkpoint()
    # The actor's log (the dashboard's actor page): which trial runs here, also when actors are reused.
    print(f"{describe(ctx.sweep, trial_id, config)} starts" + (" (restored)" if checkpoint else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="satune-trial-") as tmp:
        restored, meta = None, {}
        if checkpoint is not None:
            restored = Path(checkpoint.to_directory(str(Path(tmp) / "restored")))
            meta = json.loads((restored / META_FILE).read_text())
        ended = _ended(ctx, spec, meta, restored, Path(tmp))
        if ended is not None:  # after Tune last saved its state (the driver died, or the store went away)
            why, again = ended
            print(f"{describe(ctx.sweep, trial_id, config)} {why}", flush=True)
            tune.report(again)
            return
        opened = _open_run(ctx, spec, trial_id, config, meta)
        run_id = opened.run_id
        behind = tracking.LogBehind(ctx.tracking_uri, run_id)
        on_epoch = _epochs(ctx, spec, trial_id, config, opened, behind, meta.get("history", []), restored is None)
        have = opened.params if opened.created else None  # (a re-opened run is asked what it has)
        try:
            result = run_trial(
                spec,
                on_epoch=on_epoch,
                on_start=lambda effective: tracking.log_new_params(ctx.tracking_uri, run_id, effective, have),
                checkpoint=restored,
                workdir=Path(tmp) / "work",
                sources=partial(load_source, ctx.tracking_uri),
            )
            behind.wait()
        except Exception:
            _settle(behind)
            trial_runs.end_attempt(ctx.tracking_uri, run_id, raised=True)
            raise
        finally:
            behind.close()
        _publish(ctx.tracking_uri, opened, spec, result, Path(tmp))
        tune.report(_final(ctx, result.metrics, spec))
        trial_runs.end_attempt(ctx.tracking_uri, run_id, raised=False)


def _final(ctx: TrialContext, metrics: dict[str, float], spec: TrialSpec) -> dict:
    """The final report as Tune gets it: what it reads of it (the whole of it is in MLflow)."""
    return {k: v for k, v in metrics.items() if k in ctx.told} | {"epoch": spec.train.epochs - 1}


def _settle(behind: tracking.LogBehind) -> None:
    """The epoch in flight when the trial raised: sent if it can be (a retry fills in what it lacks)."""
    try:
        behind.wait()
    except Exception as exc:  # noqa: BLE001 - the trial's own error is the one to raise
        print(f"could not log the last epoch to MLflow ({type(exc).__name__}); a retry logs it", flush=True)


def _open_run(
    ctx: TrialContext, spec: TrialSpec, trial_id: str, config: dict[str, Any], meta: dict
) -> tracking.TrialRun:
    """The trial's MLflow run (the same one again after a restore), tagged with where this attempt runs
    (a retried trial may land elsewhere): which node, by Ray's id and address, and which actor (the
    dashboard's Actors page lists it by this id)."""
    import ray

    here = ray.get_runtime_context()
    where: dict[str, object] = {
        NODE_TAG: f"{here.get_node_id()} ({ray.util.get_node_ip_address()})",
        ACTOR_TAG: here.get_actor_id(),
    }
    if meta:
        where[RESUMED_TAG] = meta["epoch"]
    return tracking.trial_run(
        ctx.tracking_uri,
        experiment_id=ctx.experiment_id,
        parent_id=ctx.parent_run_id,
        trial_id=trial_id,
        name=f"trial-{trial_id}",
        spec=spec.model_dump(mode="json"),
        run_id=meta.get("run_id"),
        tags={**_grouping(config), **where},
    )


def _epochs(
    ctx: TrialContext,
    spec: TrialSpec,
    trial_id: str,
    config: dict[str, Any],
    opened: tracking.TrialRun,
    behind: tracking.LogBehind,
    history: list[dict],
    fresh: bool,
) -> Callable[[dict, Path | None], None]:
    """What each epoch does once trained: its checkpoint and metrics to Tune, then to MLflow, sent
    while the next epoch trains (`behind`), and waited for before the next report to Tune (where a
    scheduler may stop the trial).

    Every epoch reaches MLflow exactly once, whatever stopped an earlier attempt: epochs are logged
    after Tune has them; on a restart, epochs Tune has and MLflow lacks are filled in from the
    checkpoint, and re-run epochs MLflow already has (bit-identical) are not logged."""
    from ray import tune

    uri, run_id = ctx.tracking_uri, opened.run_id
    fail_at = ctx.fail_at_epoch if fresh else None
    gauges = TrialGauges(ctx.sweep, trial_id, config, ctx.proxy, spec.train.epochs)
    if history:  # a restored trial shows where it stands at once
        gauges.epoch(history[-1])
    logged = set() if opened.created else tracking.metric_steps(uri, run_id, "train/loss")
    for past in history:
        if past["epoch"] not in logged:
            tracking.log_metrics(uri, run_id, past, step=past["epoch"])

    def on_epoch(metrics: dict, ckpt_dir: Path | None) -> None:
        assert ckpt_dir is not None  # run_trial checkpoints every epoch into its workdir
        history.append(metrics)
        meta = {"run_id": run_id, "trial_id": trial_id, "epoch": metrics["epoch"], "history": history}
        (ckpt_dir / META_FILE).write_text(json.dumps(meta))
        behind.wait()  # the epoch before in MLflow before Tune may stop this trial at this report
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)))
        gauges.epoch(metrics)
        if metrics["epoch"] not in logged:
            behind.log_metrics(metrics, step=metrics["epoch"])
        if fail_at is not None and metrics["epoch"] == fail_at:
            raise InjectedFailure(f"injected failure after epoch {fail_at}")

    return on_epoch


def _publish(uri: str, opened: tracking.TrialRun, spec: TrialSpec, result: TrialResult, tmp: Path) -> None:
    """The final report into the trial's run: result.json, the outcomes, then final-only metrics, the
    flags and the integrity tag in one request (the tag marks the end as logged), then the weights."""
    import torch

    run_id = opened.run_id
    for file, text in result.files().items():
        tracking.log_text(uri, run_id, text, file)
    last = result.history[-1] if result.history else {}
    final_only = {k: v for k, v in result.metrics.items() if k not in last}  # eval/*, time/total_s, ...
    if not opened.created and spec.train.epochs in tracking.metric_steps(uri, run_id, "time/total_s"):
        final_only = {}  # logged by an attempt that died before its end: not twice
    flagged = {}
    if result.collapsed_at is not None:  # (1-based, as the epochs are printed)
        flagged[COLLAPSED_TAG] = f"robust accuracy collapsed at epoch {result.collapsed_at + 1}"
    if result.metrics.get("last/overfit") == 1:
        flagged[OVERFITTING_TAG] = (
            f"the selected checkpoint beats the last by "
            f"{result.metrics['last/pgd_gap']:+.3f} PGD accuracy "
            f"(p {result.metrics['last/pgd_gap_p']:.2g})"
        )
    # The integrity tag with the last of the metrics, in one request: it marks the trial's end as logged.
    integrity = {tracking.INTEGRITY_TAG: "; ".join(result.integrity) or "ok"}
    tracking.log_metrics(uri, run_id, final_only, step=spec.train.epochs, tags=flagged | integrity)
    weights = tmp / "model.pt"
    torch.save(result.model.state_dict(), weights)
    tracking.log_file(uri, run_id, weights, "model")


def _ended(ctx: TrialContext, spec: TrialSpec, meta: dict, restored: Path | None, tmp: Path) -> tuple[str, dict] | None:
    """A restored trial that had ended before Tune saved it so: why, and what it reports again. Its
    final result, when its MLflow run finished; its last epoch, when its checkpoint was emptied
    (tune.pruning: Tune had it finished, and its run did not finish, so its scheduler stopped it).
    None: it trains on."""
    done = _finished_result(ctx.tracking_uri, meta.get("run_id"), tmp) if meta else None
    if done is not None:
        return "had already finished: its result is reported again", _final(ctx, done, spec)
    if restored is not None and {p.name for p in restored.iterdir()} == {META_FILE}:
        return "had been stopped by its scheduler: its last epoch is reported again", meta["history"][-1]
    return None


def _finished_result(uri: str, run_id: str | None, into: Path) -> dict | None:
    """The final report of a trial whose MLflow run this trainable ended FINISHED, after it logged
    everything (its integrity tag comes last; a run the scheduler stopped early has none)."""
    if run_id is None:
        return None
    run = tracking.get_run(uri, run_id)
    if run.status != "FINISHED" or tracking.INTEGRITY_TAG not in run.tags:
        return None
    return json.loads(tracking.download(uri, run_id, "result.json", into).read_text())["metrics"]


def _grouping(config: dict[str, Any]) -> dict[str, str]:
    """Tags that group a configuration's repeats in MLflow's UI (group by satune.config)."""
    from satune.sweep.summary import config_id

    return {CONFIG_TAG: config_id(config), REPEAT_TAG: str(config.get(REPEAT_KEY, 0))}


def load_source(uri: str, where: str) -> Any:
    """A transfer's source: `mlflow:<run id>` from this sweep's tracking server, else a folder."""
    from satune.final import load_logged
    from satune.trial import load_folder

    return load_logged(uri, where.removeprefix("mlflow:")) if where.startswith("mlflow:") else load_folder(where)
