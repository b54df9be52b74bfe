"""SAT's cost: epoch time of SAT(f) relative to full PGD-AT, against the simple model f + (1-f)*clean/AT.

Everything is measured in this one process, interleaved over rounds (clean, AT, SAT(f) for each f),
so machine noise hits every method alike; ratios of medians are printed, not absolute times.

    .venv/bin/python bench/sat_cost.py [--dataset mnist5k] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import torch
from timing import epoch_times, setup

from satune import runtime
from satune.attacks import Attack
from satune.data import load_data
from satune.methods import SubsetAdversarial
from satune.models import create_model
from satune.specs import parse_trial

FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def main() -> None:
    args, device = setup(__doc__)
    spec = parse_trial(
        {
            "data": {"dataset": args.dataset},
            "threat": {"norm": "l2", "eps": 1.5, "steps": 7},
            "method": {"kind": "at"},
            "train": {"epochs": 1, "batch_size": 128},
        }
    )
    data = load_data(spec.data, runtime.cache_dir(spec.runtime), device)
    n = len(data.train)
    attack = Attack.from_threat(spec.threat)
    methods = {"clean": torch.zeros(n, dtype=torch.bool), "at": torch.ones(n, dtype=torch.bool)}
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    for f in FRACTIONS:
        in_a = torch.zeros(n, dtype=torch.bool)
        in_a[perm[: round(f * n)]] = True
        methods[f"sat{f}"] = in_a

    def variant(in_a):
        def build():
            model = create_model(spec.model, data.shape, [data.num_classes], data.mean, data.std)
            return model, SubsetAdversarial(attack, in_a.to(device))

        return build

    t, evals = epoch_times({k: variant(v) for k, v in methods.items()}, data.train, spec.train, device, args.rounds)
    print(
        f"dataset {args.dataset}, {n} training images, L2 PGD-7, batch 128, {args.threads} thread(s), "
        f"device {device}, median of {args.rounds} rounds"
    )
    print(f"clean/AT epoch-time ratio: {t['clean'] / t['at']:.3f}")
    print(f"{'f':>5} {'SAT/AT time':>12} {'f+(1-f)c/AT':>12} {'grad_evals SAT/AT':>18}")
    for f in FRACTIONS:
        predicted = f + (1 - f) * t["clean"] / t["at"]
        print(f"{f:5.1f} {t[f'sat{f}'] / t['at']:12.3f} {predicted:12.3f} {evals[f'sat{f}'] / evals['at']:18.3f}")


if __name__ == "__main__":
    main()
