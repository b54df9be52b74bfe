"""run_trial(): the one place a trial is assembled. `satune run` and the Tune trainable both call it.

data -> the method kind's build (SAT's A from a cached ranking, BiaMAT's auxiliary data, ...) ->
model -> fit -> final evaluation of the selected checkpoint on the final slice. Every default the
trial resolves is reported in `effective`, so that what ran can be read back and rerun.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from satune import runtime
from satune.attacks import Attack
from satune.data import DataError, load_data
from satune.evaluate import (
    Outcomes,
    accuracies,
    eval_step_size,
    final_metrics,
    integrity_problems,
    robust_above_clean,
    select_metrics,
    select_outcomes,
)
from satune.methods import BuildContext, Built, Source, kind_of
from satune.models import create_model
from satune.ranking import difficulty_scores
from satune.specs import TrialSpec, interval_keys
from satune.stats import ALPHA, mcnemar_p
from satune.train import FitResult, OnEpoch, fit

log = logging.getLogger("satune")

OnStart = Callable[[dict[str, Any]], None]


@dataclass
class TrialResult:
    spec: TrialSpec
    metrics: dict[str, float]  # the final report: eval/*, proxy/*, last/*, time/total_s, train/selected_epoch
    history: list[dict]  # per epoch: train/*, select/*, time/epoch_s
    model: torch.nn.Module  # with the selected checkpoint's weights
    effective: dict[str, Any] = field(default_factory=dict)  # every value it trained with, defaults resolved
    outcomes: Outcomes | None = None  # the selected checkpoint, per final-slice example
    integrity: list[str] = field(default_factory=list)  # failed evaluation checks (empty: all passed)
    collapsed_at: int | None = None  # the epoch whose check saw robust accuracy collapse

    def to_json(self) -> dict:
        """The result file: the spec as given (unset fields left out, so that it validates again to
        the same spec), the values as run, the final report, every epoch."""
        return {
            "spec": self.spec.model_dump(mode="json", by_alias=True, exclude_unset=True),
            "effective": self.effective,
            "metrics": self.metrics,
            "history": self.history,
            "integrity": self.integrity,
        }

    def files(self) -> dict[str, str]:
        """What a trial leaves, by file name: the result file, and the per-example outcomes when
        there are any (in a `satune run` folder, and as artifacts of the trial's MLflow run)."""
        files = {"result.json": as_json(self.to_json())}
        if self.outcomes is not None:
            files["outcomes.csv"] = self.outcomes.csv()
        return files


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def write_files(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


SourceLoader = Callable[[str], Source]
SMALL_SELECT = 100  # below this, one example of the select slice moves its accuracy by a point or more


def load_folder(where: str) -> Source:
    """A `satune run` folder as a source: its result.json and selected checkpoint."""
    folder = Path(where)
    if not (folder / "result.json").exists() or not (folder / "checkpoint" / "state.pt").exists():
        raise DataError(f"trial.method.source: {where} is not a `satune run` folder (result.json, checkpoint/)")
    saved = torch.load(folder / "checkpoint" / "state.pt", map_location="cpu", weights_only=True)
    state = saved["best_state"] if saved.get("best_state") is not None else saved["model"]
    return Source(json.loads((folder / "result.json").read_text()), state)


def build_context(spec: TrialSpec, sources: SourceLoader = load_folder) -> BuildContext:
    """The trial's runtime, data and attack, as its method kind is built from them."""
    device = runtime.configure(spec.runtime, spec.seed)
    if device.type == "cuda":  # gpu/peak_mib is this trial's, also in an actor that ran others before
        torch.cuda.reset_peak_memory_stats(device)
    cache = runtime.cache_dir(spec.runtime)
    data = load_data(spec.data, cache, device)
    log.info(
        "data: %s, %d train / %d select / %d final, device %s",
        spec.data.dataset,
        len(data.train),
        len(data.select),
        len(data.final),
        device,
    )
    if len(data.select) < SMALL_SELECT:
        log.warning(
            "the select slice holds %d examples (one is %.1f points): checkpoints and winners chosen on it "
            "are noisy; give it more with data.select_fraction",
            len(data.select),
            100 / len(data.select),
        )
    return BuildContext(
        spec,
        data,
        Attack.from_threat(spec.threat),
        device,
        cache,
        scores=lambda: difficulty_scores(spec, data, device, cache),
        source=sources,
    )


def prepare(spec: TrialSpec) -> None:
    """What every trial of a sweep shares (SAT's ranking), computed once before them."""
    kind = kind_of(spec.method)
    if kind.prepare is not None:
        kind.prepare(build_context(spec))


def run_trial(
    spec: TrialSpec,
    *,
    on_epoch: OnEpoch | None = None,
    on_start: OnStart | None = None,
    checkpoint: Path | None = None,
    workdir: Path | None = None,
    sources: SourceLoader = load_folder,
) -> TrialResult:
    """Train and evaluate one trial: build, train (train.fit), report (the final evaluation).

    `on_start` receives the effective values before the first epoch; `checkpoint` resumes from a
    directory written by an earlier run of the same spec; `workdir` is where this run writes its
    per-epoch checkpoint (a temporary directory when omitted).
    """
    t0 = time.perf_counter()
    ctx = build_context(spec, sources)
    built = kind_of(spec.method).build(ctx)
    if built.summary:
        log.info("%s", built.summary)
    model = _model(spec, ctx, built)
    effective = _effective(spec, ctx, built, model)
    if on_start is not None:
        on_start(effective)
    data, threat = ctx.data, spec.eval_threat

    def select(m):
        return select_metrics(m, data.select, threat, spec.eval, runtime.derive_seed(spec.seed, "select"))

    with tempfile.TemporaryDirectory(prefix="satune-") as tmp:
        result: FitResult = fit(
            model,
            built.method,
            data.train,
            spec.train,
            spec.seed,
            ctx.device,
            select=select,
            select_metric=spec.eval.select_metric,
            select_epochs=spec.selection_epochs(),
            select_n=len(data.select),
            stop_on_collapse=spec.train.stop_on_collapse,
            on_epoch=on_epoch,
            workdir=Path(workdir or tmp),
            resume_from=checkpoint,
            amp=spec.runtime.amp,
        )
    metrics, outcomes, integrity = _report(spec, ctx, built, model, result)
    metrics["time/total_s"] = time.perf_counter() - t0
    if ctx.device.type == "cuda":  # what a trial needs of a shared GPU (resources.gpu below 1)
        metrics["gpu/peak_mib"] = torch.cuda.max_memory_reserved(ctx.device) / 2**20
    return TrialResult(spec, metrics, result.history, model, effective, outcomes, integrity, result.collapsed_at)


def _model(spec: TrialSpec, ctx: BuildContext, built: Built) -> torch.nn.Module:
    """The method's model (a transfer trial's source), or a new one whose initial weights depend on
    the trial seed alone; NHWC weights where runtime.channels_last says so."""
    data = ctx.data
    model = built.model
    if model is None:
        heads = [data.num_classes] + ([built.aux_classes] if built.aux_classes else [])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(runtime.derive_seed(spec.seed, "model"))
            model = create_model(spec.model, data.shape, heads, data.mean, data.std)
    if runtime.channels_last(spec.runtime, ctx.device, model):
        model = model.to(memory_format=torch.channels_last)  # convolutions then give NHWC activations
    return model


def _effective(spec: TrialSpec, ctx: BuildContext, built: Built, model: torch.nn.Module) -> dict[str, Any]:
    """Every value the trial resolved, with what it resolved to (MLflow's params)."""
    data, device, threat = ctx.data, ctx.device, spec.eval_threat
    n = len(data.final) if spec.eval.n is None else min(spec.eval.n, len(data.final))  # (no float copy to count)
    return {
        "seed": spec.seed,
        "threat.step_size": spec.threat.alpha,
        "eval.norm": threat.norm,
        "eval.eps": threat.eps,
        "eval.pgd_step_size": eval_step_size(threat, spec.eval),
        "eval.n": n,
        "eval.autoattack.n": spec.eval.autoattack.count(n),
        "data.shape": list(data.shape),
        "data.train_examples": len(data.train),
        "data.select_examples": len(data.select),
        "eval.select_epochs": spec.selection_epochs(),
        "runtime.device": str(device),
        "runtime.threads": torch.get_num_threads(),
        "runtime.amp": runtime.amp_active(device, spec.runtime.amp),
        "runtime.channels_last": runtime.channels_last(spec.runtime, device, model),
        **built.effective,
    }


def _report(
    spec: TrialSpec, ctx: BuildContext, built: Built, model: torch.nn.Module, result: FitResult
) -> tuple[dict[str, float], Outcomes, list[str]]:
    """The final report, named apart from the epochs': the last epoch's checkpoint on the final slice
    (robust overfitting shows as last/pgd_gap), then the selected one on the select slice (the
    search's proxy) and on the final slice, AutoAttack included. Leaves the selected weights in `model`."""
    data, threat = ctx.data, spec.eval_threat
    final_x, final_y = data.final.tensors(spec.eval.n)
    last = len(result.history) - 1
    selected = result.best_epoch if result.best_epoch is not None else last
    seed = runtime.derive_seed(spec.seed, "eval")
    overall = {k for acc in ("clean_acc", "pgd_acc") for k in (acc, *interval_keys(acc))}  # clean_n, ...
    metrics: dict[str, float] = {}
    last_pgd = None
    if selected != last:
        lasts, last_outcomes = final_metrics(model, data.final, threat, spec.eval, data.classes, seed, autoattack=False)
        metrics |= {f"last/{k}": lasts[f"eval/{k}"] for k in overall}
        last_pgd = last_outcomes.correct["pgd"]
        assert result.best_state is not None  # a selected epoch before the last was kept
        model.load_state_dict(result.best_state)
    integrity = integrity_problems(model, final_x[:64], final_y[:64])
    log.info("final evaluation of epoch %s on %d examples", selected, len(final_x))
    evaluated, outcomes = final_metrics(model, data.final, threat, spec.eval, data.classes, seed, built.a_classes)
    metrics |= evaluated
    if selected == last:  # the same checkpoint: the same numbers
        metrics |= {f"last/{k}": evaluated[f"eval/{k}"] for k in overall}
    metrics |= overfitting(outcomes.correct["pgd"], last_pgd)
    # What chose it, again for the selected checkpoint (seeded: the numbers its check saw), with intervals.
    chosen = select_outcomes(model, data.select, threat, spec.eval, runtime.derive_seed(spec.seed, "select"))
    for kind, ok in chosen.correct.items():
        metrics |= accuracies("proxy", kind, ok, chosen.labels, data.classes, built.a_classes, per_class=False)
    metrics["train/selected_epoch"] = selected
    metrics["train/collapsed"] = float(result.collapsed_at is not None)
    metrics["train/grad_evals"] = result.history[-1]["train/grad_evals"]  # the whole training's cost
    integrity += robust_above_clean(outcomes)
    for problem in integrity:
        log.warning("evaluation integrity: %s", problem)
    if result.collapsed_at is not None:
        log.warning(
            "catastrophic overfitting: robust accuracy on the select slice collapsed at epoch %d%s",
            result.collapsed_at + 1,
            " (training stopped at the check that confirmed it)" if spec.train.stop_on_collapse else "",
        )
    return metrics, outcomes, integrity


def overfitting(selected: torch.Tensor, last: torch.Tensor | None) -> dict[str, float]:
    """Robust overfitting: the selected checkpoint against the last one under PGD on the same
    final-slice examples. The gap is flagged (last/overfit) when it is positive and the exact McNemar
    test puts it beyond the noise of these examples."""
    if last is None:  # the last checkpoint was the one selected
        return {"last/pgd_gap": 0.0, "last/pgd_gap_p": 1.0, "last/overfit": 0.0}
    gap = float(selected.float().mean() - last.float().mean())
    p = mcnemar_p(int((selected & ~last).sum()), int((~selected & last).sum()))
    return {"last/pgd_gap": gap, "last/pgd_gap_p": p, "last/overfit": float(gap > 0 and p < ALPHA)}
