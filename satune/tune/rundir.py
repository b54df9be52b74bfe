"""Where one run of a sweep lives: `storage/<name>/<started>/`, with its state in `sweep.json`.

The state names the MLflow parent run and says how the run ended: starting → running →
finished | interrupted | failed. `--resume` continues the newest run that did not finish. No Ray
here: the driver, the CLI and the tests read run directories without starting anything.
"""

from __future__ import annotations

import json
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satune.errors import UserError
from satune.specs import SweepSpec

STATE_FILE = "sweep.json"
JOURNAL_FILE = "optuna.journal"  # the sweep's Optuna studies, one per grid cell
# What may change between a sweep and its --resume: how it runs, not what it computes.
RESUMABLE_CHANGES = {"resources", "max_failures"}


class SweepError(UserError):
    """The sweep cannot start or resume as asked; a one-line message for the user."""


@dataclass
class RunDir:
    """A sweep run's directory (None until claimed: nothing is written before it is) and its state."""

    sweep: SweepSpec
    path: Path | None
    state: dict = field(default_factory=dict)

    def claim(self) -> Path:
        """Create the directory of a new run: a name no other run has, even one started in the
        same second by another process (mkdir is the arbiter)."""
        if self.path is None:
            root = sweep_root(self.sweep)
            root.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for n in range(1, 1000):
                candidate = root / (stamp if n == 1 else f"{stamp}-{n}")
                try:
                    candidate.mkdir()
                except FileExistsError:
                    continue
                self.path = candidate
                break
            else:
                raise SweepError(f"storage: cannot create a run directory under {root}")
            self.save()
        return self.path

    def save(self, **changes) -> None:
        """Update the state and write it whole (written aside, then renamed: never torn)."""
        self.state |= changes
        assert self.path is not None, "claim() first"
        tmp = self.path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.path / STATE_FILE)


def sweep_root(sweep: SweepSpec) -> Path:
    return Path(sweep.storage) / sweep.name


def _order(run: Path) -> tuple[str, int]:
    """Runs sort by start time, then by the suffix a same-second start got (-2, -3, ...)."""
    day, _, rest = run.name.partition("-")
    clock, _, n = rest.partition("-")
    return f"{day}-{clock}", int(n) if n.isdigit() else 1


def latest_run_dir(sweep: SweepSpec) -> Path | None:
    root = sweep_root(sweep)
    runs = [p for p in root.glob("*") if (p / STATE_FILE).exists()] if root.exists() else []
    return max(runs, key=_order) if runs else None


def read_state(run_dir: Path) -> dict:
    return json.loads((run_dir / STATE_FILE).read_text())


def comparable(sweep: SweepSpec) -> dict:
    data = sweep.model_dump(mode="json", by_alias=True)
    return {k: v for k, v in data.items() if k not in RESUMABLE_CHANGES}


def prepare(sweep: SweepSpec, source: Path, resume: bool) -> RunDir:
    """A new run (unclaimed: nothing written yet), or for --resume the newest unfinished one."""
    if not resume:
        return RunDir(sweep, None, {"spec": comparable(sweep), "file": source.read_text(), "status": "starting"})
    path = latest_run_dir(sweep)
    if path is None:
        raise SweepError(f"--resume: no earlier run of sweep '{sweep.name}' in {sweep_root(sweep)}")
    state = read_state(path)
    if state["status"] == "finished":
        raise SweepError(f"--resume: the last run of '{sweep.name}' ({path.name}) finished; nothing to resume")
    old, new = state["spec"], comparable(sweep)
    changed = sorted(k for k in set(old) | set(new) if _differs(old.get(k), new.get(k), _set(sweep).get(k)))
    if changed:
        raise SweepError(f"--resume: the sweep file changed in {', '.join(changed)} since {path.name}; "
                         "only resources and max_failures may change (run without --resume to start anew)")  # fmt: skip
    return RunDir(sweep, path, state)


def _set(sweep: SweepSpec) -> dict:
    """The sweep's values that differ from their defaults."""
    return sweep.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def _differs(old: Any, new: Any, set_: Any) -> bool:
    """Whether a value changed since the run began. A field that satune gained since then (absent
    from the saved spec) is no change while it keeps its default (absent from `set_`): a sweep
    interrupted before an upgrade resumes after it."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old != new
    set_ = set_ if isinstance(set_, dict) else {}
    if set(old) - set(new):  # a field satune no longer has
        return True
    return any(_differs(old[k], v, set_.get(k)) if k in old else k in set_ for k, v in new.items())


def writable_by_others(path: Path) -> Path | None:
    """The first of `path` and its parents that another user may write to, if any.

    Resuming unpickles Tune's state from storage: whoever can write there can run code as the
    user who resumes. A sticky directory (/tmp) is fine: others cannot replace what is inside.
    """
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            return p
    return None
