"""A throwaway PostgreSQL cluster and an MLflow server on it, started as an operator starts them.

Debian's `postgresql` binaries (`initdb`, `pg_ctl`; `make test` installs the package) run a cluster of
their own in a fresh directory: it listens on 127.0.0.1 at a free port (its unix socket in that
directory, for its owner alone), lets one role in with a random password (SCRAM), and holds one
database for MLflow. PostgreSQL refuses to run as root: as root, the cluster runs as the `postgres`
system user. `mlflow server` finds the password in a pgpass file (PGPASSFILE), as docker/compose.yaml's
mlflow service does: neither its command line nor its environment holds it.

Used by tests/integration/test_postgres.py and bench/postgres_logging.py.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from satune.tracking import LocalServer, free_port, server_env
from satune.tracking.server import _die_with_parent

INSTALL_HINT = "`make test` installs Debian's postgresql package"


def pg_bin() -> Path | None:
    """The newest PostgreSQL's bin directory that Debian installed (/usr/lib/postgresql/<major>/bin)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, default=None)


class Postgres:
    """A PostgreSQL cluster in a fresh directory under the system's temp dir, for one role and database.

    (Not under pytest's base temp: that is private to its user, and as root the cluster's user must
    reach its directory.)"""

    def __init__(self, user: str = "mlflow", database: str = "mlflow"):
        bin_dir = pg_bin()
        if bin_dir is None:
            raise FileNotFoundError(f"no PostgreSQL under /usr/lib/postgresql/*/bin: {INSTALL_HINT}")
        self.bin, self.user, self.database = bin_dir, user, database
        self.host, self.port = "127.0.0.1", free_port()
        self.password = secrets.token_hex(24)
        self.dir: Path | None = None
        self.running = False

    @property
    def version(self) -> str:
        return self.bin.parent.name

    @property
    def data(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "postgres.log"

    @property
    def pgpass(self) -> Path:
        """hostname:port:database:username:password, owner-only (libpq ignores a file others can read)."""
        assert self.dir is not None
        return self.dir / "pgpass"

    @property
    def uri(self) -> str:
        """MLflow's backend store URI: no password (libpq reads it from PGPASSFILE)."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{self.database}"

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, tool: str, *args: str, stdin: str | None = None) -> None:
        cmd = [*self._as_owner(), str(self.bin / tool), *args]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, cwd="/")
        if done.returncode != 0:
            log = self.log_path.read_text() if self.dir and self.log_path.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}")

    def start(self) -> Postgres:
        self.dir = Path(tempfile.mkdtemp(prefix="satune-pg-"))  # 0700
        try:
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            # Peer auth on the socket (the cluster's owner only: the socket dir is theirs, mode 0700),
            # SCRAM passwords over TCP.
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            )
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    f"\nlisten_addresses = '{self.host}'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.dir}'\nunix_socket_permissions = 0700\n"
                )
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "start")
            self.running = True
            # The password goes on stdin, never on a command line (`ps` shows those to everyone).
            sql = (
                f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}';\n"
                f"CREATE DATABASE {self.database} OWNER {self.user};\n"
            )
            self._run(
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.dir),
                "-p",
                str(self.port),
                "-d",
                "postgres",
                stdin=sql,
            )
            fd = os.open(self.pgpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{self.host}:{self.port}:{self.database}:{self.user}:{self.password}\n")
        except BaseException:
            self.stop()
            raise
        return self

    def connect(self):
        """A psycopg2 connection as the role, over TCP with its password: what MLflow's server does."""
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.database,
            connect_timeout=10,
        )

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            if self.running:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
                self.running = False
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PostgresServer(LocalServer):
    """`mlflow server` on 127.0.0.1 with `postgres` as its backend store, artifacts under `storage`:
    satune's LocalServer (start, health check, stop) with another store."""

    def __init__(self, postgres: Postgres, storage: Path, workers: int = 2):
        super().__init__(storage)
        self.postgres, self.workers = postgres, workers

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.postgres.uri,
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    def launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        env = {**server_env(), "PGPASSFILE": str(self.postgres.pgpass)}
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
