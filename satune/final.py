"""The final stage of evaluation: AutoAttack on a trained model over the whole final slice (or as
many examples as asked), with sample sizes, 95 % intervals, per-example outcomes, integrity checks
and a RobustBench-style card. For a trial's MLflow run (the winners of `satune sweep`, `satune eval
RUN_ID`) or for a `satune run` directory; the results go into the run they evaluate.

Each evaluation of a run logs `final/*` at the next step (a later one, with more examples or another
version, is a new point beside the earlier ones), its settings as `satune.final.*` tags and its
outcomes and card as artifacts under `final/<label>/`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from satune import runtime, tracking
from satune.data import load_data
from satune.evaluate import (
    Outcomes,
    accuracies,
    autoattack_correct,
    autoattack_package,
    clean_correct,
    integrity_problems,
    robust_above_clean,
)
from satune.methods import Source, kind_of
from satune.models import create_model
from satune.specs import TrialSpec, set_path
from satune.specs.final import Settings
from satune.tracking.tags import (
    FINAL_AUTOATTACK_TAG,
    FINAL_N_TAG,
    FINAL_PACKAGE_TAG,
    FINAL_SEED_TAG,
    FINAL_TAG,
    FINAL_THREAT_TAG,
    INTEGRITY_TAG,
)
from satune.trial import as_json, load_folder, write_files

log = logging.getLogger("satune")


@dataclass
class Assessment:
    metrics: dict[str, float]
    outcomes: Outcomes
    integrity: list[str]  # failed checks; empty when all passed
    card: dict[str, Any]

    def files(self, name: str) -> dict[str, str]:
        """What an evaluation leaves beside its trial (`name` titles the model card)."""
        return {
            "outcomes.csv": self.outcomes.csv(),
            "card.json": as_json(self.card),
            "card.md": card_markdown(self.card, name),
        }


def assess(spec: TrialSpec, result: dict, state: dict, settings: Settings) -> Assessment:
    """AutoAttack (and clean accuracy, on the same examples) of the weights `state` of a trial whose
    result file is `result`."""
    device = runtime.configure(spec.runtime, spec.seed)
    data = load_data(spec.data, runtime.cache_dir(spec.runtime), device)
    rebuild = kind_of(spec.method).rebuild
    if rebuild is not None:
        model = rebuild(result, state)
    else:
        n_heads = len({k.split(".")[1] for k in state if k.startswith("heads.")})  # BiaMAT's auxiliary head too
        heads = [int(state[f"heads.{i}.weight"].shape[0]) for i in range(n_heads)]
        model = create_model(spec.model, data.shape, heads, data.mean, data.std)
        model.load_state_dict(state)
    model.to(device).eval()
    a_classes = result.get("effective", {}).get("method.a_classes")
    aa, threat = settings.autoattack, settings.threat(spec)
    x, y = data.final.tensors()
    n = aa.count(len(y))
    x, y = x[:n], y[:n]
    integrity = integrity_problems(model, x[:64], y[:64])
    log.info(
        "final evaluation: AutoAttack %s, %s eps %.4g, on %d of %d final-slice examples",
        aa.version,
        threat.norm,
        threat.eps,
        n,
        len(data.final),
    )
    outcomes = Outcomes(y.cpu())
    outcomes.correct["clean"] = clean_correct(model, x, y, spec.eval.batch_size).cpu()
    outcomes.correct["aa"] = autoattack_correct(
        model, x, y, threat, aa, batch_size=spec.eval.batch_size, n_classes=data.num_classes
    ).cpu()
    a_idx = [data.classes.index(c) for c in a_classes] if a_classes else None
    metrics: dict[str, float] = {}
    for kind, ok in outcomes.correct.items():
        metrics |= accuracies("final", kind, ok, outcomes.labels, data.classes, a_idx)
    integrity += robust_above_clean(outcomes)
    for problem in integrity:
        log.warning("evaluation integrity: %s", problem)
    card = {
        "dataset": spec.data.dataset,
        "classes": len(data.classes),
        "threat_model": threat.norm.upper() if threat.norm == "l2" else "Linf",
        "eps": threat.eps,
        "architecture": spec.model.arch,
        "method": spec.method.kind,
        "extra_data": spec.method.extra_data(),
        "clean_acc": metrics["final/clean_acc"],
        "autoattack_acc": metrics["final/aa_acc"],
        "autoattack_acc_95": [metrics["final/aa_acc_lo"], metrics["final/aa_acc_hi"]],
        "n_examples": n,
        "autoattack": {"version": aa.version, "attacks": aa.attacks, "seed": aa.seed, "package": autoattack_package()},
        "integrity": integrity or "all checks passed",
    }
    return Assessment(metrics, outcomes, integrity, card)


def card_markdown(card: dict[str, Any], title: str) -> str:
    """The card as a person reads it (RobustBench's leaderboard columns)."""
    lo, hi = card["autoattack_acc_95"]
    extra = ", ".join(card["extra_data"]) or "none"
    attacks = card["autoattack"]["version"] + (
        f" ({', '.join(card['autoattack']['attacks'])})" if card["autoattack"]["attacks"] else ""
    )
    rows = [
        ("dataset", f"{card['dataset']} ({card['classes']} classes), final slice, {card['n_examples']} examples"),
        ("threat model", f"{card['threat_model']}, eps {card['eps']:.4g}"),
        ("architecture", card["architecture"]),
        ("training", card["method"]),
        ("extra data", extra),
        ("clean accuracy", f"{card['clean_acc']:.2%}"),
        ("AutoAttack accuracy", f"{card['autoattack_acc']:.2%} (95 % interval {lo:.2%} – {hi:.2%})"),
        ("AutoAttack", f"{attacks}, seed {card['autoattack']['seed']}, {card['autoattack']['package']}"),
        ("integrity checks", card["integrity"] if isinstance(card["integrity"], str) else "; ".join(card["integrity"])),
    ]
    return f"# {title}\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def _label(step: int, settings: Settings) -> str:
    aa = settings.autoattack
    return f"{step}-{aa.version}-n{aa.n}"


# --------------------------------------------------------------------------------------------
# Where the model comes from, where the results go


def evaluate_run(uri: str, run_id: str, settings: Settings, *, threads: int | None = None) -> dict[str, float]:
    """Evaluate the selected weights a trial logged (`model/model.pt`) and log into its run."""
    run = tracking.get_run(uri, run_id)
    found = load_logged(uri, run_id)
    result, state = found.result, found.state
    spec = _with_threads(TrialSpec.model_validate(result["spec"]), threads)
    done = assess(spec, result, state, settings)
    metrics = done.metrics | _gaps(run.metrics, done.metrics)
    step = len(tracking.metric_steps(uri, run_id, "final/aa_acc"))
    label = _label(step, settings)
    for file, text in done.files(run.name).items():
        tracking.log_text(uri, run_id, text, f"final/{label}/{file}")
    # Last, and in one request: the metrics with the tag that marks this evaluation done. Killed
    # before it, the evaluation is run again at the same step and label; after it, never again.
    tracking.log_metrics(uri, run_id, metrics, step=step, tags=_tags(spec, settings, done))
    return metrics


def load_logged(uri: str, run_id: str) -> Source:
    """A trial's run as a source: its result.json and its selected weights (model/model.pt)."""
    with tempfile.TemporaryDirectory(prefix="satune-run-") as tmp:
        result = json.loads(tracking.download(uri, run_id, "result.json", Path(tmp)).read_text())
        weights = tracking.download(uri, run_id, "model/model.pt", Path(tmp))
        return Source(result, torch.load(weights, map_location="cpu", weights_only=True))


def evaluate_dir(directory: Path, settings: Settings) -> Assessment:
    """Evaluate a `satune run` directory's selected checkpoint; results beside it in final/<label>/."""
    found = load_folder(str(directory))
    result, spec = found.result, TrialSpec.model_validate(found.result["spec"])
    done = assess(spec, result, found.state, settings)
    done.metrics |= _gaps(result["metrics"], done.metrics)
    previous = sorted((directory / "final").glob("*/metrics.json")) if (directory / "final").exists() else []
    out = directory / "final" / _label(len(previous), settings)
    out.mkdir(parents=True)
    write_files(out, {"metrics.json": as_json(done.metrics), **done.files(directory.name)})
    return done


def _gaps(trial: dict[str, float], final: dict[str, float]) -> dict[str, float]:
    """How far the cheap numbers of the search sit above AutoAttack: the select-slice PGD proxy,
    and PGD on the final slice (a large gap there suggests a weak attack or masked gradients)."""
    aa = final["final/aa_acc"]
    keys = {"final/proxy_gap": "proxy/pgd_acc", "final/pgd_gap": "eval/pgd_acc"}
    return {gap: trial[k] - aa for gap, k in keys.items() if k in trial}


def _tags(spec: TrialSpec, settings: Settings, done: Assessment) -> dict[str, object]:
    aa, threat = settings.autoattack, settings.threat(spec)
    return {
        FINAL_TAG: settings.key(),
        FINAL_AUTOATTACK_TAG: aa.version + (f" ({', '.join(aa.attacks)})" if aa.attacks else ""),
        FINAL_THREAT_TAG: f"{threat.norm} eps {threat.eps:.6g}",
        FINAL_N_TAG: done.card["n_examples"],
        FINAL_SEED_TAG: aa.seed,
        FINAL_PACKAGE_TAG: done.card["autoattack"]["package"],
        INTEGRITY_TAG: "; ".join(done.integrity) or "ok",
    }


def _with_threads(spec: TrialSpec, threads: int | None) -> TrialSpec:
    if threads is None:
        return spec
    return TrialSpec.model_validate(
        set_path(spec.model_dump(mode="json", by_alias=True, exclude_unset=True), "runtime.threads", threads)
    )
