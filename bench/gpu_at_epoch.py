"""GPU cost of a CIFAR-10-sized adversarial-training epoch, and how many trials can share one GPU.

PreAct ResNet-18 (satune's `preact_resnet18`), L-inf PGD-10 (eps 8/255, step 2/255, random start),
full PGD-AT (`SubsetAdversarial` with every example in A), crop+flip augmentation, batch 128, on
random uint8 images of 3x32x32, trained by satune's own `fit()` under the runtime settings a trial
gets (`runtime.configure`: deterministic algorithms, cuDNN benchmark off).

1. One process, fp32 against bf16 autocast (`runtime.amp`), interleaved over rounds after a
   warm-up; median epoch times.
2. 1, 2, 4 training processes at once on the same device (Ray's `resources.gpu` 1, 0.5, 0.25): each
   warms up, waits for the others, then trains `--share-epochs` epochs. Per-trial epoch time and
   the throughput of all of them together (images / s over the window from the common start to
   the last process's end).

    python bench/gpu_at_epoch.py --device cuda                                   # the figures in docs/benchmarks.md
    .venv/bin/python bench/gpu_at_epoch.py --device cpu --n 64 --size 16 --steps 2 --rounds 1 --procs 1,2 --share fp32
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import statistics
import time

import torch

from satune import runtime
from satune.attacks import Attack
from satune.data import TensorSource
from satune.methods import SubsetAdversarial
from satune.models import create_model
from satune.specs import ModelSpec, RuntimeSpec, ThreatSpec, TrainSpec
from satune.train import fit

WARMUP_BATCHES = 4


def options() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=10_000, help="training images per epoch")
    ap.add_argument("--size", type=int, default=32, help="image height and width")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="PGD steps")
    ap.add_argument("--rounds", type=int, default=3, help="timed epochs per precision in part 1")
    ap.add_argument("--procs", default="1,2,4", help="concurrent training processes in part 2")
    ap.add_argument("--share", default="fp32,bf16", help="precisions for part 2 ('' skips it)")
    ap.add_argument("--share-epochs", type=int, default=2, help="timed epochs per process in part 2")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    return ap.parse_args()


def setup(args: argparse.Namespace):
    """Device, data, a fresh model / method factory and the one-epoch recipe, as a trial sets them up."""
    device = runtime.configure(RuntimeSpec(device=args.device, threads=args.threads), seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.n, 3, args.size, args.size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (args.n,), generator=gen)
    source = TensorSource(x, y, augment="crop_flip").to(device)
    k = WARMUP_BATCHES * args.batch
    warmup = TensorSource(x[:k], y[:k], augment="crop_flip").to(device)
    threat = ThreatSpec(norm="linf", eps=8 / 255, steps=args.steps, step_size=2 / 255, random_start=True)
    attack = Attack.from_threat(threat)
    spec = TrainSpec(epochs=1, batch_size=args.batch, lr=0.1, schedule="constant")

    def build():
        torch.manual_seed(0)
        model = create_model(ModelSpec(arch="preact_resnet18"), (3, args.size, args.size), [10], [0.5] * 3, [0.25] * 3)
        return model, SubsetAdversarial(attack, torch.ones(len(source), dtype=torch.bool, device=device))

    return device, source, warmup, spec, build


def epoch_seconds(build, source, spec: TrainSpec, device, amp: bool, seed: int, epochs: int = 1) -> list[float]:
    model, method = build()
    spec = spec.model_copy(update={"epochs": epochs})
    return [row["time/epoch_s"] for row in fit(model, method, source, spec, seed, device, amp=amp).history]


def worker(args: argparse.Namespace, amp: bool, barrier, results) -> None:
    """One trial of part 2: warm up, wait for the others, train, report (times, start, end, peak MiB)."""
    device, source, warmup, spec, build = setup(args)
    epoch_seconds(build, warmup, spec, device, amp, seed=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    barrier.wait()
    start = time.monotonic()
    times = epoch_seconds(build, source, spec, device, amp, seed=1, epochs=args.share_epochs)
    end = time.monotonic()
    peak = torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else float("nan")
    results.put((times, start, end, peak))


def share(args: argparse.Namespace, amp: bool, procs: int) -> tuple[float, float, float]:
    """Per-trial median epoch seconds, images / s of all processes together, peak reserved MiB per process."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=worker, args=(args, amp, barrier, results)) for _ in range(procs)]
    for w in workers:
        w.start()
    rows = []
    while len(rows) < procs:
        try:
            rows.append(results.get(timeout=5))
        except queue.Empty:
            if any(w.exitcode for w in workers):  # a crashed worker would leave the others at the barrier
                for w in workers:
                    w.kill()
                raise SystemExit("a worker of part 2 failed (its traceback is above)") from None
    for w in workers:
        w.join()
    per_trial = statistics.median(t for times, *_ in rows for t in times)
    window = max(end for *_, end, _ in rows) - min(start for _, start, _, _ in rows)
    images = procs * args.share_epochs * args.n
    return per_trial, images / window, max(peak for *_, peak in rows)


def main() -> None:
    args = options()
    device, source, warmup, spec, build = setup(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    print(f"device {device} ({name}), torch {torch.__version__}, {args.threads} CPU thread(s) per process")
    print(f"preact_resnet18, Linf PGD-{args.steps} AT, {args.n} images 3x{args.size}x{args.size}, batch {args.batch}")
    if not bf16:
        print("(no bf16 autocast on this device: runtime.autocast is a no-op, the bf16 rows repeat fp32)")

    # Part 1: fp32 against bf16 in this process, interleaved; round 0 is a short warm-up.
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(args.rounds + 1):
        for label, amp in (("fp32", False), ("bf16", True)):
            t = epoch_seconds(build, source if r else warmup, spec, device, amp, seed=r)
            if r:
                times[label] += t
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\none process, median of {args.rounds} epochs:")
    print(f"{'':6} {'epoch s':>9} {'images/s':>9} {'min..max s':>14}")
    for k, v in times.items():
        print(f"{k:6} {med[k]:9.2f} {args.n / med[k]:9.0f} {min(v):6.2f}..{max(v):<6.2f}")
    print(f"bf16/fp32 epoch-time ratio: {med['bf16'] / med['fp32']:.3f}")
    del source, warmup
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # Part 2: several trials on the same device at once, each in its own process.
    procs = [int(p) for p in args.procs.split(",") if p]
    for label in [s for s in args.share.split(",") if s]:
        print(f"\n{label}: processes sharing {device}, {args.share_epochs} timed epochs each")
        rel = f"x {procs[0]} proc"
        print(
            f"{'procs':>5} {'gpu/trial':>9} {'epoch s/trial':>13} {rel:>8} {'total img/s':>11} {rel:>8} "
            f"{'peak MiB/proc':>13}"
        )
        base = None
        for p in procs:
            per_trial, throughput, peak = share(args, label == "bf16", p)
            base = base or (per_trial, throughput)
            print(
                f"{p:5d} {1 / p:9.2f} {per_trial:13.2f} {per_trial / base[0]:8.2f} {throughput:11.0f} "
                f"{throughput / base[1]:8.2f} {peak:13.0f}"
            )


if __name__ == "__main__":
    main()
