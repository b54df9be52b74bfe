"""SAT's transfer setting (S-CSAT / S-ESAT, Losch et al. §4.3): how much of a source model's
robustness survives on another task when only a new head is trained on it, with clean data.

The source's input normalisation and backbone are frozen (no gradient, BatchNorm always in eval
mode, so its running statistics never move); a new head Linear(K, hidden)-ReLU-Linear(hidden, N)
is trained with clean cross-entropy. Attacks still reach the input through the frozen backbone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from satune.data import DataError
from satune.methods.base import BuildContext, Built, Kind
from satune.methods.sat import SubsetAdversarial
from satune.models import Net, create_model
from satune.specs import TransferSpec, TrialSpec


class Transferred(nn.Module):
    def __init__(self, source: Net, classes: int, hidden: int | None = None):
        super().__init__()
        self.source = source.requires_grad_(False)
        features = feature_size(source)
        self.head = nn.Sequential(
            nn.Linear(features, hidden or features), nn.ReLU(), nn.Linear(hidden or features, classes)
        )

    def train(self, mode: bool = True) -> Transferred:
        super().train(mode)
        self.source.eval()  # frozen: BatchNorm keeps the source's statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.source.features(x))

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.forward(x)]


def feature_size(model: Net) -> int:
    head = model.heads[0]
    assert isinstance(head, nn.Linear)
    return head.in_features


def source_model(result: dict[str, Any], state: dict[str, torch.Tensor]) -> Net:
    """The source trial's model with its selected weights (normalisation statistics included)."""
    spec = TrialSpec.model_validate(result["spec"])
    n_heads = len({k.split(".")[1] for k in state if k.startswith("heads.")})
    heads = [int(state[f"heads.{i}.weight"].shape[0]) for i in range(n_heads)]
    channels = int(state["normalize.mean"].shape[1])
    shape = tuple(result["effective"]["data.shape"]) if "data.shape" in result.get("effective", {}) else None
    if shape is None:
        raise DataError(f"trial.method.source: {spec.data.dataset} source has no recorded input shape")
    model = create_model(spec.model, (channels, shape[1], shape[2]), heads, [0.0] * channels, [1.0] * channels)
    model.load_state_dict(state)
    return model


def _build(ctx: BuildContext) -> Built:
    spec = ctx.trial.method
    assert isinstance(spec, TransferSpec)
    found = ctx.source(spec.source)
    source = source_model(found.result, found.state)
    wanted = tuple(found.result["effective"]["data.shape"])
    if tuple(ctx.data.shape) != wanted:
        raise DataError(
            f"trial.data: the source model takes {'x'.join(map(str, wanted))} images, this data is "
            f"{'x'.join(map(str, ctx.data.shape))} (set trial.data.resize: {wanted[1]})"
        )
    with torch.random.fork_rng(devices=[]):  # the new head depends on the trial seed alone
        torch.manual_seed(ctx.trial.seed)
        model = Transferred(source, ctx.data.num_classes, spec.hidden)
    clean = SubsetAdversarial(ctx.attack, torch.zeros(len(ctx.data.train), dtype=torch.bool, device=ctx.device))
    src = TrialSpec.model_validate(found.result["spec"])
    effective = {
        "method.hidden": spec.hidden or feature_size(source),
        "source.model.arch": src.model.arch,
        "source.data.dataset": src.data.dataset,
        "source.method.kind": src.method.kind,
    }
    for key in ("method.fraction", "method.weighting", "method.w_A", "method.classes", "method.split"):
        value = found.result["effective"].get(key, getattr(src.method, key.split(".", 1)[1], None))
        if value is not None:
            effective[f"source.{key}"] = value
    summary = f"transfer: {src.method.kind} {src.model.arch} from {spec.source}, a new head on top"
    return Built(clean, effective, model=model, summary=summary)


def _rebuild(result: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """A transfer trial's model from its weights: the source part, then the head."""
    inner = {k.removeprefix("source."): v for k, v in state.items() if k.startswith("source.")}
    source_result = {
        "spec": {**result["spec"], "model": {"arch": result["effective"]["source.model.arch"]}},
        "effective": result["effective"],
    }
    model = Transferred(
        source_model(source_result, inner), int(state["head.2.weight"].shape[0]), int(state["head.0.weight"].shape[0])
    )
    model.load_state_dict(state)
    return model


TRANSFER = Kind(TransferSpec, _build, rebuild=_rebuild)
