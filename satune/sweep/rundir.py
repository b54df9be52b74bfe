"""Where one run of a sweep lives: `storage/<name>/<started>/`, with its state in `sweep.json`.

The state names the MLflow parent run and says how the run ended: starting → running →
finished | interrupted | failed. `--resume` continues the newest run that did not finish. With
storage at a URL, the run's own files (state, Optuna journal) are kept in a local folder and
copied to storage as they change (satune.sweep.store). No Ray here: the driver, the CLI and the
tests read run directories without starting anything.
"""

from __future__ import annotations

import json
import logging
import stat
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from satune.errors import UserError
from satune.specs import SweepSpec
from satune.sweep.store import Storage

STATE_FILE = "sweep.json"
JOURNAL_FILE = "optuna.journal"  # the sweep's Optuna studies, one per grid cell
# What may change between a sweep and its --resume: how it runs, not what it computes.
RESUMABLE_CHANGES = {"resources", "max_failures", "storage_patience_s"}


class SweepError(UserError):
    """The sweep cannot start or resume as asked; a one-line message for the user."""


@dataclass
class RunDir:
    """A sweep run's directory (None until claimed: nothing is written before it is) and its state."""

    sweep: SweepSpec
    path: Path | None
    state: dict = field(default_factory=dict)
    _pushed: dict[str, bytes] = field(default_factory=dict, repr=False)  # what storage holds, by file
    _failing: bool = field(default=False, repr=False)  # the last copy up failed (and said so)

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.sweep.storage)

    @property
    def location(self) -> str:
        """Where the run is kept: its folder, or its place at storage's URL."""
        assert self.path is not None, "claim() first"
        if not self.storage.remote:
            return str(self.path)
        return f"{self.sweep.storage.rstrip('/')}/{self.sweep.name}/{self.path.name}"

    def claim(self) -> Path:
        """Create the directory of a new run: a name no other run has, even one started in the
        same second by another process (mkdir is the arbiter; with storage at a URL, the names
        there are taken too)."""
        if self.path is None:
            root = sweep_root(self.sweep)
            root.mkdir(parents=True, exist_ok=True)
            taken = set(self.storage.folders(self.sweep.name)) if self.storage.remote else set()
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for n in range(1, 1000):
                candidate = root / (stamp if n == 1 else f"{stamp}-{n}")
                if candidate.name in taken:
                    continue
                try:
                    candidate.mkdir()
                except FileExistsError:
                    continue
                self.path = candidate
                break
            else:
                raise SweepError(f"storage: cannot create a run directory under {root}")
            if self.storage.remote:  # Tune's saved state names the journal by this path: --resume recreates it
                self.state["local"] = str(self.path)
            self.save()
        return self.path

    def save(self, **changes) -> None:
        """Update the state and write it whole (written aside, then renamed: never torn)."""
        self.state |= changes
        self.state["revision"] = self.state.get("revision", 0) + 1  # which copy is newer, after a move
        assert self.path is not None, "claim() first"
        tmp = self.path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.path / STATE_FILE)
        self.sync()

    def sync(self) -> None:
        """With storage at a URL: copy up what changed of the run's own files. The journal goes
        up to its last whole record (Optuna may be appending one); Tune calls this before it saves
        its own state, which must never know of more trials than the stored journal does."""
        if self.path is None or not self.storage.remote or self.storage.given_up:  # (the sweep said why)
            return
        for name in (STATE_FILE, JOURNAL_FILE):
            path = self.path / name
            if not path.exists():
                continue
            data = path.read_bytes()
            data = data[: data.rfind(b"\n") + 1]
            if self._pushed.get(name) != data:
                log = logging.getLogger("satune")
                try:
                    self.storage.write(data, self.sweep.name, self.path.name, name)
                except Exception as exc:  # noqa: BLE001 - the local copy stands; the next change tries again
                    if not self._failing:  # once, not at every save while the store is away
                        log.warning(
                            "storage: could not copy %s up (%s: %s); %s keeps the run's files, and each "
                            "save tries again",
                            name,
                            type(exc).__name__,
                            exc,
                            self.path,
                        )
                    self._failing = True
                    continue
                if self._failing:
                    log.info("storage: copies reach %s again", self.location)
                    self._failing = False
                self._pushed[name] = data


def sweep_root(sweep: SweepSpec) -> Path:
    """The sweep's runs on this machine: in storage, or in its local mirror."""
    return Storage(sweep.storage).local / sweep.name


def _order(name: str) -> tuple[str, int]:
    """Runs sort by start time, then by the suffix a same-second start got (-2, -3, ...)."""
    day, _, rest = name.partition("-")
    clock, _, n = rest.partition("-")
    return f"{day}-{clock}", int(n) if n.isdigit() else 1


def latest_run_dir(sweep: SweepSpec) -> Path | None:
    """The newest run of the sweep (with storage at a URL, its files fetched to this machine)."""
    store = Storage(sweep.storage)
    if store.remote:
        for name in sorted(store.folders(sweep.name), key=_order, reverse=True):
            path = fetch(sweep, name)
            if path is not None:
                return path
        return None
    root = sweep_root(sweep)
    runs = [p for p in root.glob("*") if (p / STATE_FILE).exists()] if root.exists() else []
    return max(runs, key=lambda p: _order(p.name)) if runs else None


def run_dir_named(sweep: SweepSpec, name: str) -> Path:
    """Where the run `name`'s own files are on this machine (fetched, with storage at a URL)."""
    return (fetch(sweep, name) if Storage(sweep.storage).remote else None) or sweep_root(sweep) / name


def fetch(sweep: SweepSpec, name: str) -> Path | None:
    """The run's own files from storage at a URL into the folder the run began in (Tune's saved
    state names the Optuna journal by that path), where storage's copy is newer: storage's state
    has the higher revision (it then brings its journal too: the run went on elsewhere), or the
    same one and a longer journal (Optuna only appends). None if storage has no such run."""
    store = Storage(sweep.storage)
    stored = store.read(sweep.name, name, STATE_FILE)
    if stored is None:
        return None
    state = json.loads(stored)
    path = Path(state.get("local") or sweep_root(sweep) / name)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(
            f"storage: cannot recreate the run's folder {path} here ({exc.strerror}): Tune's saved "
            "state names the run's Optuna journal by that path"
        ) from None
    here, ours = path / STATE_FILE, path / JOURNAL_FILE
    mine = json.loads(here.read_text()).get("revision", 0) if here.exists() else -1
    theirs = state.get("revision", 0)
    journal = store.read(sweep.name, name, JOURNAL_FILE)
    if theirs > mine:
        tmp = path / (STATE_FILE + ".tmp")
        tmp.write_bytes(stored)
        tmp.replace(here)
    if journal is not None and (theirs > mine or not ours.exists() or ours.stat().st_size < len(journal)):
        ours.write_bytes(journal)
    return path


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
        raise SweepError(
            f"--resume: the sweep file changed in {', '.join(changed)} since {path.name}; "
            "only resources, max_failures and storage_patience_s may change (run without --resume to start anew)"
        )
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
