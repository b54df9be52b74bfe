"""BiaMAT's cost: epoch time of AT+BiaMAT relative to plain PGD-AT, and the cost of the confidence
gate alone (BiaMAT against the same step with the naive gate, which skips the confidence pass).
The paper measured 1.66x AT and < 1 % for the gate (WRN-28-10, CIFAR-10 + ImageNet32, one V100).

    .venv/bin/python bench/biamat_cost.py [--rounds 3] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import torch
from timing import epoch_times, setup

from satune import runtime
from satune.attacks import Attack
from satune.data import load_data
from satune.data.aux import load_aux
from satune.methods import Biamat, SubsetAdversarial
from satune.models import create_model
from satune.specs import BiamatSpec, parse_trial


def main() -> None:
    args, device = setup(__doc__)
    spec = parse_trial(
        {
            "data": {"dataset": "mnist5k", "classes": [0, 1, 2, 3, 4]},
            "threat": {"norm": "l2", "eps": 1.5, "steps": 7},
            "method": {"kind": "at"},
            "train": {"epochs": 1, "batch_size": 128},
        }
    )
    data = load_data(spec.data, runtime.cache_dir(spec.runtime), device)
    aux_specs = BiamatSpec(aux=["mnist5k[5-9]", "digits", "noise"]).aux
    aux = load_aux(aux_specs, data.shape, "none", runtime.cache_dir(spec.runtime), device)
    attack = Attack.from_threat(spec.threat)
    n = len(data.train)

    def at():
        model = create_model(spec.model, data.shape, [data.num_classes], data.mean, data.std)
        return model, SubsetAdversarial(attack, torch.ones(n, dtype=torch.bool, device=device))

    def biamat(gate):
        def build():
            model = create_model(spec.model, data.shape, [data.num_classes, aux.n_classes], data.mean, data.std)
            biamat_spec = BiamatSpec(aux=aux_specs, gate=gate, warmup_epochs=0)
            method = Biamat(biamat_spec, attack, aux, aux_batch_size=128, hi_loss="trades", seed=0)
            return model, method

        return build

    variants = {"at": at, "biamat": biamat("biamat"), "naive": biamat("naive")}
    t, evals = epoch_times(variants, data.train, spec.train, device, args.rounds)
    print(
        f"mnist5k digits 0-4 ({n} images) + 128 auxiliary images per step, L2 PGD-7, batch 128, "
        f"{args.threads} thread(s), device {device}, median of {args.rounds} rounds"
    )
    print(
        f"BiaMAT/AT epoch time:        {t['biamat'] / t['at']:.3f}   (grad_evals {evals['biamat'] / evals['at']:.3f})"
    )
    print(f"naive-gate/AT epoch time:    {t['naive'] / t['at']:.3f}")
    print(f"gate cost, BiaMAT/naive - 1: {t['biamat'] / t['naive'] - 1:+.3%}")


if __name__ == "__main__":
    main()
