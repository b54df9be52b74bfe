"""Integration tests: a real MLflow server on 127.0.0.1 and real `satune sweep` processes, each
of which starts a real private Ray. Nothing here is mocked."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from satune.tracking import LocalServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite store, as a cluster would run it."""
    with LocalServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server.uri


def smoke_file(tmp_path: Path, name: str, uri: str | None, **over) -> Path:
    data = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    data["name"] = name
    data["storage"] = str(tmp_path / "runs")
    data["tracking"] = {"uri": uri, "experiment": name}
    for key, value in over.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def satune(*args, env=None, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "satune.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kw)  # fmt: skip


def start_satune(*args, env=None) -> subprocess.Popen:
    """In its own session, so the test can kill the driver and everything it started."""
    return subprocess.Popen([sys.executable, "-m", "satune.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
                            start_new_session=True)  # fmt: skip


def kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
