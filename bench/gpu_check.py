"""One prepared check for the few minutes a GPU (H100 / H200) is at hand: what a CIFAR-10 adversarial-
training epoch costs there, where its time goes, and how many images/s a sweep gets from the GPU.

Parts, in order (each a group of rows in the table; `--parts` picks some, by name or number):

1. cuda_tests  `pytest -q tests/gpu` in a subprocess: passed / skipped / failed (all skipped without CUDA).
2. at_epoch    Full PGD-AT as a trial trains it (satune's fit(), SubsetAdversarial, runtime.configure's
               settings): PreAct ResNet-18, L-inf PGD-10 (eps 8/255, step 2/255, random start), crop+flip,
               batch 128, on 50 000 random 3x32x32 uint8 images held on the GPU (CIFAR-10's epoch). fp32 and
               bf16 (`runtime.amp`), each with channels_last off and on (as trial.py sets it), and a clean
               epoch. Each configuration: 5 warm-up steps, then 4 blocks of 10 steps timed between two
               torch.cuda.synchronize(); the epoch is the median block's time per step x 391 steps
               (extrapolated, printed with the 10 000-image figure). One real fit() epoch of 10 000 images
               checks the extrapolation. Goal: <= 10 s per 50 000-image AT epoch on an H100-class GPU.
3. where       Known causes of a slow epoch: the data pipeline alone (TensorSource.batches with crop+flip,
               no model) for an epoch; host syncs per training step (torch.cuda.set_sync_debug_mode, CUDA
               only), with the lines that sync; PGD-20 evaluation throughput (satune.evaluate.pgd_correct)
               at eval batch 128, 500 and 1000; the epoch with cuDNN's autotuner and non-deterministic
               kernels allowed (runtime.configure turns both off for bit-exact runs).
4. biamat      A BiaMAT step (variant at, 128 auxiliary images of a second random set with 100 classes per
               step, built as bench/biamat_cost.py builds it) against an AT step on the same model; the
               paper measured 1.66x (WRN-28-10, one V100).
5. autoattack  AutoAttack standard (satune.evaluate.autoattack_correct, eval batch 500) on 1 000 images: its
               cost follows the points that stay robust. The model is the PreAct ResNet-18 after 60 PGD-AT
               steps on class-templated images (tests/support/fabricated.py: a template per class plus
               noise); half the 1 000 are held-out templated images (nearly all stay robust), half random
               images with random labels (nearly none), so about half are robust, as for a PGD-AT model on
               CIFAR-10 (AA accuracy about 48 %). Clean and AA accuracy are printed beside the time.
6. sweep       `satune sweep --plain` of k = 1, 2, 4, 8 PGD-AT trials (bf16, 1 epoch of 5 000 images each,
               CIFAR-10 files written by tests/support/fabricated.py) sharing the GPU (resources.gpu 1/k):
               images/s of all trials = trained images / (last trial's end - first trial's start), from
               their MLflow runs (Ray's and MLflow's start-up are outside that window, the trials' data
               loading and evaluation inside), and each trial's peak GPU memory (metric gpu/peak_mib).

Run it from the repository root after `make install`:

    .venv/bin/python bench/gpu_check.py                   # the GPU check: about 6 minutes (*), under 8
    .venv/bin/python bench/gpu_check.py --parts 2,3       # some parts
    .venv/bin/python bench/gpu_check.py --dry-run         # CPU, tiny sizes, the same code: 1-3 minutes

(*) Estimated from the H100 figures in docs/benchmarks.md, not yet measured; parts and sweeps that would
start after `--budget-s` (400 s) are skipped, and say so, so the run ends in time.

It prints one table and writes it as JSON (`--json`, default gpu_check.json in the current folder or under
`--out`). A part that fails (an exception, a failed CUDA test, a sweep that exits non-zero) prints its
traceback and the other parts still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.etree import ElementTree

import torch
import yaml

from satune import runtime, tracking
from satune.attacks import Attack
from satune.data import TensorSource
from satune.data.aux import AuxData
from satune.evaluate import autoattack_correct, clean_correct, eval_attack, pgd_correct
from satune.methods import Biamat, SubsetAdversarial
from satune.models import create_model
from satune.specs import AutoAttackSpec, BiamatSpec, EvalSpec, ModelSpec, RuntimeSpec, ThreatSpec, TrainSpec
from satune.train import fit

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 10.0  # seconds per 50 000-image PGD-10 AT epoch on an H100-class GPU
PAPER_BIAMAT = 1.66  # BiaMAT / AT epoch time (Lee & Lee, WACV 2023)
MEAN, STD = [0.5] * 3, [0.25] * 3  # normalisation inside the model; random images need no real statistics


@dataclass(frozen=True)
class Sizes:
    """How big each part is: the GPU check's sizes, or the dry run's (CPU, same code paths)."""

    size: int  # image height and width
    epoch_images: int  # the epoch the figures are stated for (CIFAR-10's training set)
    check_images: int  # one real fit() epoch, to check the extrapolation from timed steps
    batch: int
    steps: int  # PGD steps of the training attack
    warmup: int  # untimed steps per configuration
    block: int  # steps between two synchronised clock reads
    blocks: int
    eval_n: int
    eval_batches: tuple[int, ...]
    eval_steps: int
    aa_n: int
    aa_train_steps: int
    sweep_k: tuple[int, ...]
    sweep_images: int  # training images per trial
    sweep_test: int  # CIFAR-10 test images: select and final slices
    arch: str = "preact_resnet18"


GPU = Sizes(
    size=32,
    epoch_images=50_000,
    check_images=10_000,
    batch=128,
    steps=10,
    warmup=5,
    block=10,
    blocks=4,
    eval_n=2000,
    eval_batches=(128, 500, 1000),
    eval_steps=20,
    aa_n=1000,
    aa_train_steps=60,
    sweep_k=(1, 2, 4, 8),
    sweep_images=5000,
    sweep_test=500,
)
DRY = Sizes(
    size=8,
    epoch_images=256,
    check_images=64,
    batch=16,
    steps=2,
    warmup=1,
    block=2,
    blocks=2,
    eval_n=64,
    eval_batches=(8, 16, 32),
    eval_steps=2,
    aa_n=8,
    aa_train_steps=4,
    sweep_k=(1, 2),
    sweep_images=64,
    sweep_test=40,
)
PARTS = ("cuda_tests", "at_epoch", "where", "biamat", "autoattack", "sweep")


# --------------------------------------------------------------------------------------------
# The table


@dataclass
class Row:
    part: str
    key: str  # stable name for readers of the JSON, e.g. at_epoch.fp32_nhwc
    setting: str
    value: float | None  # None: not measured here (the note says why)
    unit: str
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, part: str, key: str, setting: str, value: float | None, unit: str, note: str = "") -> None:
        self.rows.append(Row(part, f"{part}.{key}", setting, value, unit, note))
        print(f"  {setting}: {_fmt(value)} {unit}  {note}", flush=True)

    def fail(self, part: str, why: str) -> None:
        self.failures.append(f"{part}: {why}")
        self.add(part, "error", "FAILED", None, "", why)


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def table(report: Report, meta: dict[str, Any]) -> str:
    head = ("part", "setting", "value", "unit", "note")
    cells = [head] + [(r.part, r.setting, _fmt(r.value), r.unit, r.note) for r in report.rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = [f"{k}: {v}" for k, v in meta.items() if k != "args"]
    for i, c in enumerate(cells):
        lines.append(
            "  ".join(
                [c[0].ljust(widths[0]), c[1].ljust(widths[1]), c[2].rjust(widths[2]), c[3].ljust(widths[3]), c[4]]
            ).rstrip()
        )
        if i == 0:
            lines.append("-" * (sum(widths) + 8 + 40))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# What every part shares


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    scratch: Path
    started: float
    results: dict[str, float] = field(default_factory=dict)  # per-step seconds other parts compare with
    _data: TensorSource | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def data(self) -> TensorSource:
        """The epoch's random uint8 images and labels, on the device (made once)."""
        if self._data is None:
            s, gen = self.sizes, torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (s.epoch_images, 3, s.size, s.size), dtype=torch.uint8, generator=gen)
            y = torch.randint(0, 10, (s.epoch_images,), generator=gen)
            self._data = TensorSource(x, y, augment="crop_flip").to(self.device)
        return self._data

    def threat(self) -> ThreatSpec:
        return ThreatSpec(norm="linf", eps=8 / 255, steps=self.sizes.steps, step_size=2 / 255, random_start=True)

    def train_spec(self) -> TrainSpec:
        return TrainSpec(epochs=1, batch_size=self.sizes.batch, lr=0.1, schedule="constant")

    def model(self, heads: list[int], nhwc: bool | None = None) -> torch.nn.Module:
        """A fresh model laid out as trial.py lays it out (None: the device's default layout)."""
        torch.manual_seed(0)
        s = self.sizes
        model = create_model(ModelSpec.model_validate({"arch": s.arch}), (3, s.size, s.size), heads, MEAN, STD)
        if runtime.channels_last(RuntimeSpec(channels_last=nhwc), self.device, model):
            model = model.to(memory_format=torch.channels_last)
        return model

    def at(self, n: int, attacked: bool = True, nhwc: bool | None = None) -> tuple[torch.nn.Module, SubsetAdversarial]:
        """Full PGD-AT (every one of `n` examples in A), or clean training."""
        in_a = torch.full((n,), attacked, dtype=torch.bool, device=self.device)
        return self.model([10], nhwc), SubsetAdversarial(Attack.from_threat(self.threat()), in_a)

    def epoch_steps(self, images: int | None = None) -> int:
        return math.ceil((images or self.sizes.epoch_images) / self.sizes.batch)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def subset(source: TensorSource, n: int) -> TensorSource:
    assert n <= len(source), f"{n} images asked of {len(source)}"
    return TensorSource(source.x[:n], source.y[:n], source.augment)  # views: no copy on the device


class Timed:
    """A source that synchronises the device and reads the clock every `block` batches after `warmup`:
    fit() runs unchanged, and the time between two reads is `block` whole training steps, data included
    (the batch after a read is drawn only once the step before it has been enqueued)."""

    def __init__(self, source: TensorSource, device: torch.device, warmup: int, block: int):
        self.source, self.device, self.warmup, self.block = source, device, warmup, block
        self.marks: list[float] = []

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, batch_size: int, gen: torch.Generator | None = None) -> Iterator:
        i = 0
        for i, batch in enumerate(self.source.batches(batch_size, gen)):
            self._mark(i)
            yield batch
        self._mark(i + 1)  # after the last step

    def _mark(self, i: int) -> None:
        if i >= self.warmup and (i - self.warmup) % self.block == 0:
            sync(self.device)
            self.marks.append(time.perf_counter())

    def per_step(self) -> float:
        """Median over blocks of seconds per step."""
        return statistics.median(b - a for a, b in zip(self.marks, self.marks[1:], strict=False)) / self.block


def step_seconds(ctx: Context, build: Callable[[int], tuple], amp: bool = False) -> float:
    """Median seconds per training step of `build(n)`'s model and method, through fit()."""
    s = ctx.sizes
    n = (s.warmup + s.block * s.blocks) * s.batch
    timed = Timed(subset(ctx.data(), n), ctx.device, s.warmup, s.block)
    model, method = build(n)
    fit(model, method, timed, ctx.train_spec(), seed=0, device=ctx.device, amp=amp)
    return timed.per_step()


def default_key(ctx: Context) -> str:
    """The fp32 row in the layout a trial gets on this device (runtime.channels_last: NHWC on CUDA)."""
    return "fp32_nhwc" if ctx.cuda else "fp32_nchw"


def bf16_note(ctx: Context) -> str:
    return "" if runtime.amp_active(ctx.device, True) else " (no bf16 autocast here: runs fp32)"


# --------------------------------------------------------------------------------------------
# 1. The CUDA tests


def part_cuda_tests(ctx: Context, report: Report) -> None:
    xml = ctx.scratch / "cuda_tests.xml"
    env = dict(os.environ) | ({} if ctx.cuda else {"CUDA_VISIBLE_DEVICES": ""})  # a CPU run hides the GPU
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu", f"--junitxml={xml}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=ctx.args.timeout,
    )
    print(done.stdout[-3000:] + done.stderr[-2000:], flush=True)
    if not xml.exists():
        raise RuntimeError(f"pytest wrote no report (exit {done.returncode})")
    suite = ElementTree.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = counts["failures"] + counts["errors"]
    passed = counts["tests"] - failed - counts["skipped"]
    why = "" if ctx.cuda else "expected on the CPU: every test needs CUDA"
    report.add("cuda_tests", "passed", "tests/gpu passed", passed, "tests")
    report.add("cuda_tests", "skipped", "tests/gpu skipped", counts["skipped"], "tests", why)
    report.add("cuda_tests", "failed", "tests/gpu failed", failed, "tests", "the output is above" if failed else "")
    if failed or done.returncode not in (0, 5):  # 5: nothing collected
        report.failures.append(f"cuda_tests: {failed} failed (pytest exit {done.returncode})")


# --------------------------------------------------------------------------------------------
# 2. The AT epoch


CONFIGS = (
    ("fp32, NCHW", "fp32_nchw", False, False),
    ("fp32, NHWC", "fp32_nhwc", False, True),
    ("bf16, NCHW", "bf16_nchw", True, False),
    ("bf16, NHWC", "bf16_nhwc", True, True),
)


def part_at_epoch(ctx: Context, report: Report) -> None:
    s = ctx.sizes
    steps, steps_check = ctx.epoch_steps(), ctx.epoch_steps(s.check_images)
    how = f"median of {s.blocks}x{s.block} steps after {s.warmup}"
    epochs = {}
    for label, key, amp, nhwc in CONFIGS:
        per_step = step_seconds(ctx, partial(ctx.at, nhwc=nhwc), amp)
        ctx.results[f"at.{key}"] = per_step
        epochs[label] = epoch = per_step * steps
        note = (
            f"{per_step:.4f} s/step x {steps} steps ({how}); {s.check_images} images: "
            f"{per_step * steps_check:.3g} s; {s.batch / per_step:.0f} img/s"
        ) + (bf16_note(ctx) if amp else "")
        report.add("at_epoch", key, f"PGD-{s.steps} AT {label}", epoch, f"s/epoch of {s.epoch_images}", note)
    per_step = step_seconds(ctx, lambda n: ctx.at(n, attacked=False))
    report.add(
        "at_epoch",
        "clean",
        "clean (no attack), fp32, default layout",
        per_step * steps,
        f"s/epoch of {s.epoch_images}",
        f"{per_step:.4f} s/step; {s.batch / per_step:.0f} img/s",
    )
    best = min(epochs, key=lambda k: epochs[k])
    verdict = "met" if epochs[best] <= GOAL_S else f"{epochs[best] / GOAL_S:.1f}x the goal"
    if not ctx.cuda or s.epoch_images != GPU.epoch_images:
        verdict = "not comparable: the goal is for 50k images on a GPU"
    report.add(
        "at_epoch",
        "goal",
        f"goal: <= {GOAL_S:g} s per 50k-image AT epoch (H100-class)",
        epochs[best],
        f"s/epoch of {s.epoch_images}",
        f"best: {best}; {verdict}",
    )
    check_epoch(ctx, report)


def check_epoch(ctx: Context, report: Report) -> None:
    """One real fit() epoch in the device's default layout (fp32) against its extrapolation from steps."""
    s = ctx.sizes
    default = default_key(ctx)
    model, method = ctx.at(s.check_images)
    row = fit(model, method, subset(ctx.data(), s.check_images), ctx.train_spec(), 0, ctx.device).history[0]
    guess = ctx.results[f"at.{default}"] * ctx.epoch_steps(s.check_images)
    report.add(
        "at_epoch",
        "fit_check",
        f"one fit() epoch of {s.check_images}, fp32, default layout",
        row["time/epoch_s"],
        "s",
        f"extrapolated from steps: {guess:.3g} s (x{row['time/epoch_s'] / guess:.2f})",
    )


# --------------------------------------------------------------------------------------------
# 3. Where an epoch's time goes


def part_where(ctx: Context, report: Report) -> None:
    pipeline(ctx, report)
    host_syncs(ctx, report)
    eval_batches(ctx, report)
    fast_kernels(ctx, report)


def pipeline(ctx: Context, report: Report) -> None:
    """The loader alone: fit()'s batch loop without the model (its fixed cost per epoch)."""
    s = ctx.sizes

    def epoch(source: TensorSource) -> float:
        sync(ctx.device)
        t0 = time.perf_counter()
        for x, y, idx in source.batches(s.batch, runtime.generator(0, "data", 0)):
            x, y, idx = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True), idx.to(ctx.device)
        sync(ctx.device)
        return time.perf_counter() - t0

    epoch(subset(ctx.data(), 4 * s.batch))  # warm-up
    seconds = epoch(ctx.data())
    at = ctx.results.get(f"at.{default_key(ctx)}")
    share = f"; {seconds / (at * ctx.epoch_steps()):.1%} of the fp32 AT epoch (part 2)" if at else ""
    report.add(
        "where",
        "pipeline",
        f"data pipeline alone, crop+flip, {s.epoch_images} images",
        seconds,
        "s/epoch",
        f"{seconds / ctx.epoch_steps() * 1e3:.2f} ms/batch{share}",
    )


def host_syncs(ctx: Context, report: Report) -> None:
    """Synchronising CUDA calls per training step (fp32 AT, default layout): the difference between
    runs of 4 and 12 steps, so once-per-epoch syncs drop out. Each one stalls the CPU until the GPU
    has caught up, so the GPU idles while the next kernels are queued."""
    if not ctx.cuda:
        report.add("where", "syncs", "host syncs per AT step", None, "syncs/step", "n/a (CUDA only)")
        return
    counts = []
    for steps in (4, 12):
        model, method = ctx.at(steps * ctx.sizes.batch)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fit(model, method, subset(ctx.data(), steps * ctx.sizes.batch), ctx.train_spec(), 0, ctx.device)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in seen if "synchroniz" in str(w.message).lower()]  # not the determinism warnings
        counts.append(Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs))
    per_line = {k: (counts[1][k] - counts[0][k]) / 8 for k in counts[1]}
    where = ", ".join(f"{k} {v:g}" for k, v in sorted(per_line.items(), key=lambda kv: -kv[1]) if v > 0)
    report.add("where", "syncs", "host syncs per AT step (fp32)", sum(per_line.values()), "syncs/step", where or "none")


def eval_batches(ctx: Context, report: Report) -> None:
    """PGD evaluation as trials run it (satune.evaluate.pgd_correct, fp32), at several batch sizes."""
    s = ctx.sizes
    model = ctx.model([10]).to(ctx.device)
    x, y = ctx.data().tensors(s.eval_n)
    attack = eval_attack(ctx.threat(), EvalSpec(pgd_steps=s.eval_steps))
    rates = {}
    for bs in s.eval_batches:
        pgd_correct(model, x[:bs], y[:bs], attack, bs, 1, seed=0)  # warm-up at this batch size
        sync(ctx.device)
        t0 = time.perf_counter()
        pgd_correct(model, x, y, attack, bs, 1, seed=0)
        sync(ctx.device)
        rates[bs] = s.eval_n / (time.perf_counter() - t0)
    for bs, rate in rates.items():
        report.add(
            "where",
            f"eval_bs{bs}",
            f"PGD-{s.eval_steps} eval, batch {bs}",
            rate,
            "img/s",
            f"{rate / max(rates.values()):.0%} of the best; {s.eval_n} images",
        )


@contextlib.contextmanager
def autotuned() -> Iterator[None]:
    """cuDNN's autotuner on and non-deterministic kernels allowed, for the block only."""
    was = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        torch.backends.cudnn.benchmark = was[2]


def fast_kernels(ctx: Context, report: Report) -> None:
    base = ctx.results.get(f"at.{default_key(ctx)}") or step_seconds(ctx, lambda n: ctx.at(n))
    with autotuned():
        per_step = step_seconds(ctx, lambda n: ctx.at(n))
    note = f"x{per_step / base:.2f} the deterministic step ({base:.4f} s)" + ("" if ctx.cuda else "; no effect on CPU")
    report.add(
        "where",
        "autotuned",
        "AT fp32, cudnn.benchmark on, non-deterministic",
        per_step * ctx.epoch_steps(),
        f"s/epoch of {ctx.sizes.epoch_images}",
        note,
    )


# --------------------------------------------------------------------------------------------
# 4. BiaMAT against AT


def part_biamat(ctx: Context, report: Report) -> None:
    s = ctx.sizes
    n_aux = min(s.epoch_images, 10_000)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n_aux, 3, s.size, s.size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 100, (n_aux,), generator=gen)
    source_of = torch.zeros(n_aux, dtype=torch.int64, device=ctx.device)
    aux = AuxData(TensorSource(x, y, "crop_flip").to(ctx.device), ("random100",), source_of, 100)
    attack = Attack.from_threat(ctx.threat())

    def biamat(n: int) -> tuple:
        # warmup_epochs 0: the gate (and its confidence pass) from the first step
        spec = BiamatSpec.model_validate({"aux": ["cifar100"], "variant": "at", "warmup_epochs": 0})
        return ctx.model([10, 100]), Biamat(spec, attack, aux, aux_batch_size=s.batch, hi_loss="trades", seed=0)

    at, bia = step_seconds(ctx, lambda n: ctx.at(n)), step_seconds(ctx, biamat)
    steps = ctx.epoch_steps()
    unit = f"s/epoch of {s.epoch_images}"
    report.add("biamat", "at", "AT, fp32, default layout", at * steps, unit, f"{at:.4f} s/step")
    report.add(
        "biamat",
        "biamat",
        f"BiaMAT (variant at, +{s.batch} aux images/step)",
        bia * steps,
        unit,
        f"{bia:.4f} s/step; grad evals 2x AT's",
    )
    report.add("biamat", "ratio", "BiaMAT / AT epoch time", bia / at, "x", f"paper: {PAPER_BIAMAT}x (WRN-28-10, V100)")


# --------------------------------------------------------------------------------------------
# 5. AutoAttack


def part_autoattack(ctx: Context, report: Report) -> None:
    """AutoAttack's cost follows the points that stay robust: APGD-T, FAB-T and Square run only on them.
    Half the images are held-out class-templated ones the model learned (nearly all stay robust), half
    the random images of part 2 with their random labels (nearly all wrong or broken at once), so about
    half are robust, as for a PGD-AT PreAct ResNet-18 on CIFAR-10 (AA accuracy about 48 %)."""
    s = ctx.sizes
    n_train, half = s.aa_train_steps * s.batch, s.aa_n // 2
    x, y = (torch.from_numpy(a) for a in fabricated().images(n_train + half, 10, seed=0, size=s.size))
    model, method = ctx.at(n_train)
    # No augmentation: a random template shifted by a crop is another random pattern. lr 0.01: at 0.1 the
    # running BatchNorm statistics lag the weights after so few steps, and eval mode misclassifies.
    spec = ctx.train_spec().model_copy(update={"lr": 0.01})
    fit(model, method, TensorSource(x[:n_train], y[:n_train]).to(ctx.device), spec, 0, ctx.device)
    noise_x, noise_y = ctx.data().tensors(s.aa_n - half)
    xt = torch.cat([x[n_train:].float().div(255).to(ctx.device), noise_x])
    yt = torch.cat([y[n_train:].to(ctx.device), noise_y])
    bs = 500  # the recipes' eval batch
    clean = float(clean_correct(model, xt, yt, bs).float().mean())
    sync(ctx.device)
    t0 = time.perf_counter()
    robust = autoattack_correct(
        model, xt, yt, ctx.threat(), AutoAttackSpec(version="standard"), batch_size=bs, n_classes=10
    )
    sync(ctx.device)
    seconds = time.perf_counter() - t0
    what = (
        f"{s.arch} after {s.aa_train_steps} PGD-AT steps on class-templated images; {half} of them held out + "
        f"{s.aa_n - half} random images; clean acc {clean:.3f}, AA acc {float(robust.float().mean()):.3f}"
    )
    report.add(
        "autoattack", "seconds", f"AutoAttack standard, Linf 8/255, {s.aa_n} images, batch {bs}", seconds, "s", what
    )
    report.add("autoattack", "images_per_s", "AutoAttack standard throughput", s.aa_n / seconds, "img/s")


def fabricated() -> ModuleType:
    """tests/support/fabricated.py (CIFAR in torchvision's on-disk format), loaded from its file."""
    spec = importlib.util.spec_from_file_location("fabricated", ROOT / "tests" / "support" / "fabricated.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# 6. Sweeps sharing the GPU


def part_sweep(ctx: Context, report: Report) -> None:
    s, base = ctx.sizes, ctx.scratch / "sweep"
    fab = fabricated()
    fab.cifar10(base / "data", n_train=s.sweep_images, n_test=s.sweep_test)
    # Ray's workers read the fabricated files: only torchvision's MD5 check is bypassed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(fab.BYPASS), os.environ.get("PYTHONPATH")]))}
    ran = []
    for k in s.sweep_k:
        if ctx.elapsed() > ctx.args.budget_s:
            report.add("sweep", f"k{k}.images_per_s", f"k={k}", None, "img/s", "skipped: --budget-s spent")
            continue
        path, log = write_sweep(ctx, base, k), base / f"k{k}.log"
        t0 = time.monotonic()
        with open(log, "w") as out:
            code = subprocess.run(
                [sys.executable, "-m", "satune.cli", "sweep", str(path), "--plain", "--no-report"],
                cwd=base,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=ctx.args.timeout,
            ).returncode
        wall = time.monotonic() - t0
        print(f"  sweep k={k}: exit {code} after {wall:.1f} s (log {log})", flush=True)
        if code:
            print(log.read_text()[-4000:], flush=True)
            report.fail("sweep", f"k={k}: satune sweep exited {code}")
            continue
        ran.append((k, f"gpu-check-k{k}", wall))
    if ran:
        with tracking.serving(None, str(base / "runs"), "satune sweep") as (uri, _):  # one store for every k
            base_rate = None
            for k, name, wall in ran:
                base_rate = sweep_rows(ctx, report, uri, k, name, wall, base_rate)


def write_sweep(ctx: Context, base: Path, k: int) -> Path:
    s = ctx.sizes
    data: dict[str, Any] = {"dataset": "cifar10", "root": str(base / "data"), "augment": "crop_flip"}
    if s.size != 32:
        data["resize"] = s.size
    gpu = (1 if k == 1 else f"1/{k}") if ctx.cuda else 0
    sweep = {
        "name": f"gpu-check-k{k}",
        "seed": 0,
        "trial": {
            "data": data,
            "model": {"arch": s.arch},
            "threat": {"norm": "linf", "eps": "8/255", "steps": s.steps, "step_size": "2/255", "random_start": True},
            "method": {"kind": "at"},
            "train": {"epochs": 1, "batch_size": s.batch, "lr": 0.1, "schedule": "constant"},
            "eval": {"pgd_steps": s.steps, "batch_size": 500, "autoattack": {"n": 0}},
            "runtime": {"device": ctx.device.type, "amp": ctx.args.sweep_amp, "cache_dir": str(base / "cache")},
        },
        "search": {"algorithm": "grid", "metric": "proxy/pgd_acc", "mode": "max", "repeats": k},
        "resources": {"cpu": 1, "gpu": gpu, "max_concurrent": k},
        "tracking": {"uri": None},
        "storage": str(base / "runs"),
    }
    path = base / f"k{k}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def sweep_rows(ctx: Context, report: Report, uri: str, k: int, name: str, wall: float, base: float | None) -> float:
    """Images/s of all trials from their MLflow runs (start and end in ms); returns it."""
    parent = tracking.sweep_parents(uri, name)[0]
    runs = tracking.child_runs(uri, parent.experiment_id, parent.run_id)
    if len(runs) != k or any(r.status != "FINISHED" for r in runs):
        raise RuntimeError(f"sweep {name}: {[r.status for r in runs]} runs, {k} FINISHED expected")
    images = sum(int(r.params["data.train_examples"]) for r in runs)  # one epoch each
    window = (max(r.end_time or 0 for r in runs) - min(r.start_time for r in runs)) / 1000
    rate = images / window
    epoch = statistics.median(r.metrics["time/epoch_s"] for r in runs)
    note = (
        f"{images} images over {window:.1f} s (first trial start to last end); epoch {epoch:.2f} s/trial; "
        f"satune sweep wall {wall:.0f} s"
    ) + ("" if base is None else f"; x{rate / base:.2f} k=1's")
    share = f"gpu {1 / k:g}" if ctx.cuda else "cpu"
    report.add("sweep", f"k{k}.images_per_s", f"k={k} trials at once ({share} each)", rate, "img/s", note)
    peaks = [r.metrics["gpu/peak_mib"] for r in runs if "gpu/peak_mib" in r.metrics]
    why = "n/a (CUDA only)" if not ctx.cuda else "n/a: the trials logged no gpu/peak_mib"
    report.add(
        "sweep",
        f"k{k}.peak_mib",
        f"k={k} peak GPU memory per trial",
        max(peaks) if peaks else None,
        "MiB",
        "max over trials" if peaks else why,
    )
    return base if base is not None else rate


# --------------------------------------------------------------------------------------------


RUNNERS: dict[str, Callable[[Context, Report], None]] = {
    "cuda_tests": part_cuda_tests,
    "at_epoch": part_at_epoch,
    "where": part_where,
    "biamat": part_biamat,
    "autoattack": part_autoattack,
    "sweep": part_sweep,
}


def options() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, the same code paths (CI)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu; --dry-run forces cpu")
    ap.add_argument("--parts", default="all", help=f"comma list of names or numbers 1-6: {','.join(PARTS)}")
    ap.add_argument("--out", type=Path, help="folder for the JSON and the work files (kept): sweep logs, data")
    ap.add_argument("--json", type=Path, help="where the table goes as JSON (default gpu_check.json in --out or .)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads in this process (a trial's cpu: 1)")
    ap.add_argument("--budget-s", type=float, help="skip what would start later (GPU 400, dry 900)")
    ap.add_argument("--sweep-amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 trials in part 6")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per subprocess (pytest, each sweep)")
    args = ap.parse_args()
    if args.dry_run:
        args.device = "cpu"
    if args.budget_s is None:
        args.budget_s = 900 if args.dry_run else 400
    return args


def chosen(parts: str) -> list[str]:
    if parts == "all":
        return list(PARTS)
    numbers = {str(i): name for i, name in enumerate(PARTS, start=1)}
    names = [numbers.get(p.strip(), p.strip()) for p in parts.split(",") if p.strip()]
    names = list(dict.fromkeys(names))  # once each, in the order given
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)} or 1-{len(PARTS)}")
    return names


def metadata(ctx: Context) -> dict[str, Any]:
    cuda = ctx.cuda
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return {
        "device": torch.cuda.get_device_name(ctx.device) if cuda else f"CPU, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "cuda": f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if cuda else "none",
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit.stdout.strip() or "unknown",
        "sizes": "dry run (CPU, tiny)" if ctx.args.dry_run else "GPU check",
        "args": {k: str(v) for k, v in vars(ctx.args).items()},
    }


def run_part(ctx: Context, report: Report, name: str) -> None:
    print(f"\n== {PARTS.index(name) + 1}. {name} (at {ctx.elapsed():.0f} s)", flush=True)
    if ctx.elapsed() > ctx.args.budget_s:
        report.add(name, "skipped", "skipped", None, "", f"--budget-s {ctx.args.budget_s:g} spent")
        return
    t0 = time.monotonic()
    try:
        RUNNERS[name](ctx, report)
    except Exception as exc:  # the other parts still run; the exit status says it failed
        traceback.print_exc()
        report.fail(name, f"{type(exc).__name__}: {exc}")
    finally:
        report.seconds[name] = time.monotonic() - t0
        if ctx.cuda:
            torch.cuda.empty_cache()  # the sweeps' trials get the memory this process cached


def main() -> int:
    args = options()
    parts = chosen(args.parts)
    sizes = DRY if args.dry_run else GPU
    device = runtime.configure(RuntimeSpec(device=args.device, threads=args.threads), seed=0)
    out = args.out.resolve() if args.out else None
    json_path = args.json or (out or Path.cwd()) / "gpu_check.json"
    with contextlib.ExitStack() as stack:
        if out is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        else:
            scratch = out / "work"
            scratch.mkdir(parents=True, exist_ok=True)
        ctx = Context(args, sizes, device, scratch, time.monotonic())
        meta = metadata(ctx)
        print("\n".join(f"{k}: {v}" for k, v in meta.items() if k != "args"), flush=True)
        report = Report()
        for name in parts:
            run_part(ctx, report, name)
    for name, seconds in report.seconds.items():
        report.add("total", f"{name}_s", f"part {name}", seconds, "s wall")
    report.add(
        "total",
        "all_s",
        "whole run",
        ctx.elapsed(),
        "s wall",
        "FAILED: " + "; ".join(report.failures) if report.failures else "every part ran",
    )
    print("\n" + table(report, meta))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps(
            {
                "meta": meta,
                "ok": not report.failures,
                "failures": report.failures,
                "rows": [asdict(r) for r in report.rows],
            },
            indent=1,
        )
    )
    print(f"\nwritten: {json_path}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
