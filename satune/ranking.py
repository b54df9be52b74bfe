"""Difficulty rankings for SAT: entropy of a clean model's training predictions, averaged over epochs.

A non-robust model of the trial's architecture is trained with clean cross-entropy on the trial's
recipe; every training forward records each example's softmax entropy (training-mode BN, augmented
input, as in SAT's code). The mean over all epochs is the difficulty score. Scores are computed once
per (data, architecture, recipe, ranking seed) and cached as a tensor file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from satune.attacks import Attack
from satune.data import DataBundle
from satune.methods import SubsetAdversarial
from satune.models import create_model
from satune.seeds import derive_seed
from satune.specs import SatSpec, TrainSpec, TrialSpec
from satune.train import fit

log = logging.getLogger("satune")


class EntropyRecorder:
    """Wraps a method and adds up each example's prediction entropy over the training passes."""

    def __init__(self, inner, n: int, device: torch.device):
        self.inner = inner
        self.total = torch.zeros(n, dtype=torch.float64, device=device)
        self.count = torch.zeros(n, dtype=torch.float64, device=device)

    def step(self, model, x, y, idx, gen):
        out = self.inner.step(model, x, y, idx, gen)
        with torch.no_grad():
            logp = F.log_softmax(out["logits"].float(), dim=1)
            entropy = -(logp.exp() * logp).sum(1)
            self.total.index_add_(0, idx, entropy.double())
            self.count.index_add_(0, idx, torch.ones_like(entropy, dtype=torch.float64))
        return out

    def __getattr__(self, name):  # start_epoch, summarize, state_dict...
        return getattr(self.inner, name)

    def scores(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float().cpu()


def ranking_key(spec: TrialSpec) -> str:
    """What determines the clean model's predictions: data (which files, too: two image folders
    with the same settings are two datasets), architecture, recipe and its precision, seed."""
    m = spec.method
    assert isinstance(m, SatSpec)
    data = spec.data.model_dump(exclude={"download", "num_workers"})
    parts = {
        "data": data,
        "arch": spec.model.arch,
        "train": _recipe(spec).model_dump(),
        "amp": spec.runtime.amp,
        "seed": m.ranking_seed,
        "v": 2,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _recipe(spec: TrialSpec) -> TrainSpec:
    assert isinstance(spec.method, SatSpec)
    epochs = spec.method.ranking_epochs or spec.train.epochs
    return TrainSpec.model_validate({**spec.train.model_dump(), "epochs": epochs})


def difficulty_scores(spec: TrialSpec, data: DataBundle, device: torch.device, cache: Path) -> torch.Tensor:
    """Mean training entropy per training example (higher = harder), cached under `cache/rankings`."""
    path = cache / "rankings" / f"{ranking_key(spec)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    m = spec.method
    assert isinstance(m, SatSpec)
    epochs = m.ranking_epochs or spec.train.epochs
    log.info("ranking: clean %s fit for %d epochs to score example difficulty (cached)", spec.model.arch, epochs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(m.ranking_seed, "ranking-model"))
        model = create_model(spec.model, data.shape, [data.num_classes], data.mean, data.std)
    n = len(data.train)
    clean = SubsetAdversarial(Attack.from_threat(spec.threat), torch.zeros(n, dtype=torch.bool, device=device))
    recorder = EntropyRecorder(clean, n, device)
    fit(
        model, recorder, data.train, _recipe(spec), derive_seed(m.ranking_seed, "ranking"), device, amp=spec.runtime.amp
    )
    scores = recorder.scores()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    torch.save(scores, tmp)
    tmp.replace(path)  # concurrent trials may both compute it; the rename keeps the file whole
    return scores
