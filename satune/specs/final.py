"""What a final evaluation runs (torch-free: the sweep's driver builds these without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from satune.specs.trial import AutoAttackSpec, ThreatSpec, TrialSpec


@dataclass(frozen=True)
class Settings:
    """What a final evaluation runs: AutoAttack's settings, and the threat model when it is not the
    trial's own evaluation threat (eval.norm / eval.eps, else the training threat)."""

    autoattack: AutoAttackSpec
    norm: Literal["l2", "linf"] | None = None
    eps: float | None = None

    def threat(self, trial: TrialSpec) -> ThreatSpec:
        return trial.eval_threat.under(self.norm, self.eps)

    def key(self) -> str:
        """Equal keys, equal evaluations of a trial: a resumed sweep does not repeat one."""
        aa = self.autoattack
        threat = f"{self.norm or 'trial'}:{self.eps if self.eps is not None else 'trial'}"
        return f"{aa.version}:{','.join(aa.attacks or [])}:n={aa.n}:seed={aa.seed}:{threat}"
