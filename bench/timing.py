"""Shared harness: time one training epoch per variant, interleaved over rounds, in one process."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from satune import runtime
from satune.train import fit


def setup(doc: str | None) -> tuple[argparse.Namespace, torch.device]:
    """The benchmarks' common options (--rounds, --threads, --device), applied."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dataset", default="mnist5k", help="(sat_cost only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args, runtime.resolve_device(args.device)


def epoch_times(
    variants: dict[str, Callable[[], tuple]], source, train_spec, device: torch.device, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """variants: name -> () -> (model, method). Returns median epoch seconds and grad_evals per variant.

    Round 0 warms caches and allocators and is not counted; every later round runs each variant
    once, so slow phases of a shared machine hit all variants alike.
    """
    times: dict[str, list[float]] = {k: [] for k in variants}
    evals: dict[str, float] = {}
    for r in range(rounds + 1):
        for name, build in variants.items():
            torch.manual_seed(0)
            model, method = build()
            row = fit(model, method, source, train_spec, seed=r, device=device).history[0]
            if r:
                times[name].append(row["time/epoch_s"])
                evals[name] = row["train/grad_evals"]
    return {k: statistics.median(v) for k, v in times.items()}, evals
