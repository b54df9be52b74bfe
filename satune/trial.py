"""run_trial(): the one place a trial is assembled. `satune run` and the Tune trainable both call it.

data -> ranking (cached) -> A/B split -> model -> method -> fit -> final evaluation of the
selected checkpoint on the final slice.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from satune import runtime
from satune.attacks import Attack
from satune.data import augmentation, load_data
from satune.data.aux import load_aux
from satune.evaluate import final_metrics, select_metrics
from satune.methods import build_method
from satune.models import create_model
from satune.ranking import membership
from satune.specs import BiamatSpec, SatSpec, TrialSpec
from satune.train import FitResult, OnEpoch, fit

log = logging.getLogger("satune")


@dataclass
class TrialResult:
    spec: TrialSpec
    metrics: dict[str, float]
    history: list[dict]
    model: torch.nn.Module  # with the selected checkpoint's weights

    def to_json(self) -> TrialResult:
        """The result file: {"spec": resolved spec, "metrics": final, "history": per epoch}."""
        return {
            "spec": self.spec.model_dump(mode="json", by_alias=True),
            "metrics": self.metrics,
            "history": self.history,
        }


def run_trial(
    spec: TrialSpec,
    on_epoch: OnEpoch | None = None,
    checkpoint: Path | None = None,
    workdir: Path | None = None,
) -> dict:
    """Train and evaluate one trial.

    `checkpoint` resumes from a directory written by an earlier run of the same spec; `workdir`
    is where this run writes its per-epoch checkpoint (a temporary directory when omitted).
    """
    t0 = time.perf_counter()
    device = runtime.configure(spec.runtime, spec.seed)
    cache = runtime.cache_dir(spec.runtime)
    data = load_data(spec.data, cache, device)
    log.info("data: %s, %d train / %d select / %d final, device %s", spec.data.dataset, len(data.train),
             len(data.select), len(data.final), device)  # fmt: skip

    in_a, a_classes = None, None
    if isinstance(spec.method, SatSpec):
        in_a, a_classes = membership(spec, data, device, cache)
        log.info("SAT: %d of %d training examples in A%s", int(in_a.sum()), len(in_a),
                 f" (classes {[data.classes[c] for c in a_classes]})" if a_classes else "")  # fmt: skip

    aux = None
    if isinstance(spec.method, BiamatSpec):
        aux = load_aux(spec.method.aux, data.shape, augmentation(spec.data), cache, device, spec.data.root)
        log.info(
            "BiaMAT: %d auxiliary images from %s, %d auxiliary classes",
            len(aux.source),
            ", ".join(aux.labels),
            aux.n_classes,
        )

    heads = [data.num_classes] + ([aux.n_classes] if aux is not None else [])
    with torch.random.fork_rng(devices=[]):  # initial weights depend on the trial seed alone
        torch.manual_seed(runtime.derive_seed(spec.seed, "model"))
        model = create_model(spec.model, data.shape, heads, data.mean, data.std)
    method = build_method(spec.method, Attack.from_threat(spec.threat), len(data.train), device, in_a, aux,
                          spec.train.batch_size, spec.seed)  # fmt: skip

    def select(m):
        return select_metrics(m, data.select, spec.threat, spec.eval, runtime.derive_seed(spec.seed, "select"))

    with tempfile.TemporaryDirectory(prefix="satune-") as tmp:
        result: FitResult = fit(
            model, method, data.train, spec.train, spec.seed, device,
            select=select, select_metric=spec.eval.select_metric, select_every=spec.eval.select_every,
            on_epoch=on_epoch, workdir=Path(workdir or tmp), resume_from=checkpoint, amp=spec.runtime.amp,
        )  # fmt: skip

    if result.best_state is not None:
        model.load_state_dict(result.best_state)
    log.info("final evaluation of epoch %s on %d examples", result.best_epoch, len(data.final))
    metrics = dict(result.history[-1])
    metrics.pop("epoch", None)
    metrics.update(final_metrics(model, data.final, spec.threat, spec.eval, data.classes,
                                 runtime.derive_seed(spec.seed, "eval"), a_classes))  # fmt: skip
    metrics["train/selected_epoch"] = result.best_epoch if result.best_epoch is not None else spec.train.epochs - 1
    metrics["time/total_s"] = time.perf_counter() - t0
    return TrialResult(spec, metrics, result.history, model)
