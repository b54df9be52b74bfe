"""Where sweep runs are kept (`storage`): a folder every Ray node mounts, or an fsspec URL
(s3://bucket/prefix; gs://, abfs://... with their fsspec package installed).

With a URL, Tune writes its experiment (trial checkpoints and results, its own state) straight to
the object store, from whichever node holds it, through this module's fsspec filesystem. The
driver's own files cannot live there: sweep.json is replaced by a rename and the Optuna journal
is appended to under a lock, which object stores do not do. They live in a local folder of the
run (under $SATUNE_MIRROR, default ~/.cache/satune/mirror) and are copied up whenever they
change; --resume, `report`, `ui` and `eval` copy them back down, on any machine. No Ray here.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from satune.errors import UserError
from satune.specs.sweep import STORAGE_URL


class StorageError(UserError):
    """Storage cannot be used as asked; a one-line message for the user."""


def is_url(storage: str) -> bool:
    return bool(STORAGE_URL.match(storage))


def mirror_root() -> Path:
    return Path(os.environ.get("SATUNE_MIRROR") or Path.home() / ".cache" / "satune" / "mirror").expanduser()


@dataclass(frozen=True)
class Storage:
    """`storage` as the sweep resolved it: an absolute path, or a URL."""

    where: str

    @property
    def remote(self) -> bool:
        return is_url(self.where)

    @cached_property
    def _fs_and_root(self) -> tuple[Any, str]:
        import fsspec

        options = {}
        if self.where.startswith("s3://") and not {"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"} & set(os.environ):
            # A request that finds the store away fails in about a second (botocore's default, legacy
            # mode, takes up to 15 s): the driver must not stall on it; Tune's trials wait on their own.
            options["config_kwargs"] = {"retries": {"mode": "standard", "max_attempts": 3}}
        fs, root = fsspec.core.url_to_fs(self.where, **options)
        return fs, root.rstrip("/")

    @property
    def fs(self) -> Any:
        return self._fs_and_root[0]

    @property
    def local(self) -> Path:
        """The folder that holds this storage's files on this machine: storage itself, or its
        mirror (`<mirror>/<protocol>/<bucket>/<prefix>`)."""
        if not self.remote:
            return Path(self.where)
        protocol, _, rest = self.where.partition("://")
        return mirror_root() / protocol / rest.strip("/")

    def url(self, *parts: str) -> str:
        """Where a run's file or folder is kept (`parts` under storage), as the filesystem names it."""
        return "/".join([self._fs_and_root[1], *parts])

    def tune_storage(self, name: str, run_dir: Path, patience: float = 0.0) -> tuple[str, Any]:
        """Tune's `storage_path` and `storage_filesystem` for the run of sweep `name` whose own
        files are in `run_dir`: that folder, or the run's place in the object store through our
        fsspec filesystem (wrapped for pyarrow, which Tune speaks): one set of credentials. On S3,
        a request that cannot reach the store is tried again for `patience` seconds."""
        if not self.remote:
            return str(run_dir), None
        import pyarrow.fs

        fs = self.fs
        if patience and fs.protocol[0] == "s3":
            from satune.sweep.patient_s3 import PatientS3FileSystem

            PatientS3FileSystem.given_up = False
            fs = PatientS3FileSystem(
                *fs.storage_args, **fs.storage_options, patience=patience, skip_instance_cache=True
            )
        return self.url(name, run_dir.name), pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))

    @property
    def given_up(self) -> bool:
        return self.__dict__.get("_given_up", False)

    def give_up(self) -> None:
        """The sweep stops because the store is away: this process's requests through Tune's
        filesystem fail at once from now on (trials, with their own copies, are stopped), and
        satune's own files are no longer copied up (the local folder keeps them)."""
        self.__dict__["_given_up"] = True
        if self.remote and self.fs.protocol[0] == "s3":
            from satune.sweep.patient_s3 import PatientS3FileSystem

            PatientS3FileSystem.given_up = True

    def folders(self, *parts: str) -> list[str]:
        """The names of the folders under `parts` in storage."""
        try:
            entries = self.fs.ls(self.url(*parts), detail=True, refresh=True)
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001 - the store is away, or refuses: one line
            raise self._failed("read", exc) from None
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"]

    def read(self, *parts: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.url(*parts))
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise self._failed("read", exc) from None

    def _failed(self, what: str, exc: Exception) -> StorageError:
        """`storage: cannot <what> <where>: <error>`, in one line, with where credentials come from."""
        hint = _CREDENTIALS.get(self.where.partition("://")[0], "") if _about_credentials(exc) else ""
        return StorageError(f"storage: cannot {what} {self.where}: {type(exc).__name__}: {_first_line(exc)}{hint}")

    def write(self, data: bytes, *parts: str) -> None:
        """A whole object: an object store replaces it atomically."""
        self.fs.pipe_file(self.url(*parts), data)

    def unreachable(self) -> str | None:
        """None when the store answers a listing of storage's root now, else why not (one line)."""
        try:
            self.fs.ls(self._fs_and_root[1], refresh=True)
        except FileNotFoundError:  # nothing kept there yet: it answered
            pass
        except Exception as exc:  # noqa: BLE001 - whatever the client raises, it did not get an answer
            return f"{type(exc).__name__}: {_first_line(exc)}"
        return None

    def check(self) -> None:
        """Pre-flight: storage takes a write, before anything is started. One line if not."""
        if not self.remote:
            return
        try:
            fs, root = self._fs_and_root
        except (ImportError, ValueError) as exc:
            raise StorageError(
                f"storage: cannot open {self.where}: {_first_line(exc)} (an s3:// URL works as "
                f"installed; other object stores need their fsspec package, e.g. gcsfs)"
            ) from None
        probe = f"{root}/.satune-probe-{uuid.uuid4().hex}"
        try:
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
        except Exception as exc:  # noqa: BLE001 - whatever the store says, in one line
            raise self._failed("write to", exc) from None


_CREDENTIALS = {
    "s3": " (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; AWS_ENDPOINT_URL for a "
    "non-AWS S3 such as MinIO; every Ray node needs them too)",
}


def _about_credentials(exc: BaseException) -> bool:
    return isinstance(exc, PermissionError) or "credential" in str(exc).lower() or "denied" in str(exc).lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
