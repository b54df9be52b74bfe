"""fit(): the epoch loop. SGD with a per-epoch schedule, per-epoch metrics, checkpoint selection on
the select slice, and a checkpoint after every epoch that resumes bit-exactly.

No Ray and no MLflow here: `on_epoch(metrics, checkpoint_dir)` is the one hook, and the caller
(the CLI or the Tune trainable) decides what to do with each epoch.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from satune.methods import Method
from satune.runtime import autocast, generator, rng_state, set_rng_state
from satune.specs import TrainSpec
from satune.stats import wilson

CHECKPOINT_FILE = "state.pt"
OnEpoch = Callable[[dict, Path | None], None]
SelectFn = Callable[[nn.Module], dict]


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None  # None when no selection ran: the last state is the result
    best_score: float = -math.inf
    best_state: dict | None = None
    collapsed_at: int | None = None  # the first check of a collapse of robust accuracy (catastrophic overfitting)


def collapsed(checks: list[dict], now: dict, n: int) -> bool:
    """Robust accuracy fell as catastrophic overfitting, the collapse of fast adversarial training
    (Wong et al., 2020), makes it fall: at this check robust accuracy on the select slice (n examples)
    is at most half of the best earlier check's, beyond noise (their 95 % intervals are apart), while
    clean accuracy held at half of that check's or more (a model that lost its clean accuracy too
    diverged: another failure)."""
    if not checks:
        return False
    best = max(checks, key=lambda h: h["select/pgd_acc"])
    before, after = best["select/pgd_acc"], now["select/pgd_acc"]
    apart = wilson(round(after * n), n)[1] < wilson(round(before * n), n)[0]
    return after <= before / 2 and apart and now["select/clean_acc"] >= best["select/clean_acc"] / 2


def fit(
    model: nn.Module,
    method: Method,
    source,
    spec: TrainSpec,
    seed: int,
    device: torch.device,
    *,
    select: SelectFn | None = None,
    select_metric: str = "select/pgd_acc",
    select_epochs: Collection[int] = (),
    select_n: int = 0,
    stop_on_collapse: bool = False,
    on_epoch: OnEpoch | None = None,
    workdir: Path | None = None,
    resume_from: Path | None = None,
    amp: bool = False,
) -> FitResult:
    """Train `model` with `method` on `source`; checkpoints go to `workdir/checkpoint` when given.

    After each epoch in `select_epochs`, `select(model)` scores the checkpoint on the select slice
    (`select_n` examples): the best by `select_metric` is kept, and a collapse of its robust accuracy
    is detected (and ends training at the check that confirms it, with `stop_on_collapse`)."""
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: spec.lr_factor(e))
    result = FitResult()
    grad_evals, start = 0.0, 0
    if resume_from is not None:
        start, grad_evals, result = _restore(Path(resume_from), device, model, opt, sched, method)

    for epoch in range(start, spec.epochs):
        if stop_on_collapse and result.collapsed_at is not None:
            break
        metrics = _train_epoch(model, method, source, spec, opt, sched, seed, epoch, device, amp, grad_evals)
        grad_evals = metrics["train/grad_evals"]
        if select is not None and epoch in select_epochs:
            _check(model, select, metrics, result, select_metric, select_n)
        result.history.append(metrics)

        ckpt = None
        if workdir is not None:
            ckpt = _save(Path(workdir), model, opt, sched, method, epoch, grad_evals, result)
        if on_epoch is not None:
            on_epoch(metrics, ckpt)
    return result


def _restore(resume_from: Path, device: torch.device, model, opt, sched, method) -> tuple[int, float, FitResult]:
    """Load the checkpoint `_save` wrote into the model, optimizer, schedule, method and generators: the
    next epoch, the gradient evaluations so far, and the result so far."""
    state = torch.load(resume_from / CHECKPOINT_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    method.load_state_dict(state["method"])
    set_rng_state(state["rng"])
    result = FitResult(
        state["history"], state["best_epoch"], state["best_score"], state["best_state"], state.get("collapsed_at")
    )
    return state["epoch"] + 1, state["grad_evals"], result


def _train_epoch(
    model: nn.Module,
    method: Method,
    source,
    spec: TrainSpec,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    seed: int,
    epoch: int,
    device: torch.device,
    amp: bool,
    grad_evals: float,
) -> dict:
    """One training pass over `source`; its metrics, `train/grad_evals` counted on from `grad_evals`."""
    t0 = time.perf_counter()
    # Generators derived from (seed, epoch): a resumed epoch sees the same batches and attacks.
    data_gen, attack_gen = generator(seed, "data", epoch), generator(seed, "attack", epoch)
    method.start_epoch(epoch)
    model.train()
    sums: dict[str, float | torch.Tensor] = defaultdict(float)
    lr = opt.param_groups[0]["lr"]
    for x, y, idx in source.batches(spec.batch_size, data_gen):
        x, y, idx = x.to(device, non_blocking=True), y.to(device, non_blocking=True), idx.to(device)
        with autocast(device, amp):
            out = method.step(model, x, y, idx, attack_gen)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        for k, v in out["stats"].items():
            sums[k] += v
    sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the epoch's one wait for the device, before its time is read
    totals = {k: float(v) for k, v in sums.items()}
    grad_evals += totals["grad_evals"]
    metrics = {"epoch": epoch, **method.summarize(totals), "train/grad_evals": grad_evals, "train/lr": lr}
    metrics["time/epoch_s"] = time.perf_counter() - t0  # the training pass alone
    return metrics


def _check(model: nn.Module, select: SelectFn, metrics: dict, result: FitResult, select_metric: str, n: int) -> None:
    """The check on the select slice after an epoch: its scores into `metrics`, a collapse of robust
    accuracy (`n` examples) and the best checkpoint so far into `result`."""
    epoch = metrics["epoch"]
    metrics.update(select(model))
    # A collapse is two checks in a row below half of the best before them: one low check that
    # recovers at the next is a dip (noisy training), not catastrophic overfitting.
    *before, previous = [h for h in result.history if "select/pgd_acc" in h] or [{}]
    if result.collapsed_at is None and previous and collapsed(before, previous, n) and collapsed(before, metrics, n):
        result.collapsed_at = previous["epoch"]
    metrics["select/collapsed"] = float(result.collapsed_at is not None)
    score = metrics[select_metric]
    if score > result.best_score:
        result.best_epoch, result.best_score = epoch, score
        result.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save(workdir: Path, model, opt, sched, method, epoch: int, grad_evals: float, result: FitResult) -> Path:
    """Write the checkpoint aside, then swap it in: a crash mid-write never leaves a torn one."""
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "method": method.state_dict(),
        "rng": rng_state(),
        "epoch": epoch,
        "grad_evals": grad_evals,
        "history": copy.deepcopy(result.history),
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "best_state": result.best_state,
        "collapsed_at": result.collapsed_at,
    }
    final, tmp = workdir / "checkpoint", workdir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / CHECKPOINT_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
