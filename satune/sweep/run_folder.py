"""A `satune run` folder, as the command uses it: where a run goes, whether it may start (or continue)
there, the line that continues it, and the files its result leaves (result.json, outcomes.csv; the
checkpoint is `train.fit`'s). `satune.trial.load_folder` reads one back. No torch here."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from satune.errors import UserError
from satune.specs import SweepSpec
from satune.sweep.rundir import sweep_root  # (storage at a URL: its local mirror)

if TYPE_CHECKING:
    from satune.trial import TrialResult


class RunFolderError(UserError):
    """A `satune run` folder that cannot be used as --out and --resume ask."""


@dataclass(frozen=True)
class RunFolder:
    path: Path
    resume: bool

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint to continue from: with --resume only."""
        return self.path / "checkpoint" if self.resume else None

    def resume_command(self, file: Path, overrides: list[str]) -> str:
        """The command that continues this run from its last finished epoch."""
        sets = [arg for item in overrides for arg in ("--set", item)]
        return shlex.join(["satune", "run", str(file), *sets, "--out", str(self.path), "--resume"])

    def write(self, result: TrialResult) -> Path:
        """The result file (and the per-example outcomes, when there are any); its path."""
        from satune.trial import write_files  # (torch: loaded already, by the trial that ran)

        write_files(self.path, result.files())
        return self.path / "result.json"


def run_folder(sweep: SweepSpec, out: Path | None, resume: bool) -> RunFolder:
    """`out`, or a new folder under the sweep's runs: with `resume`, one that holds a checkpoint;
    without, one that holds no earlier run (never overwritten)."""
    target = (out or sweep_root(sweep) / time.strftime("run-%Y%m%d-%H%M%S")).expanduser().resolve()
    if resume and not (target / "checkpoint" / "state.pt").exists():
        raise RunFolderError(f"--resume: no checkpoint in {target}")
    if not resume and any((target / name).exists() for name in ("checkpoint", "result.json")):
        raise RunFolderError(f"--out {target} holds an earlier run: continue it with --resume, or choose another --out")
    return RunFolder(target, resume)
