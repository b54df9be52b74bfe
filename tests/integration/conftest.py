"""Integration tests: a real MLflow server and a real Ray cluster on 127.0.0.1, and real `satune`
processes. Nothing here is mocked.

One Ray head (`ray start --head`, token auth on) serves the tests that join it with `--address`,
as a user joins a cluster; the tests of local mode let satune start its own Ray and MLflow.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from satune.tracking import LocalServer, free_port
from satune.tune.cluster import ensure_private_token

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
RECIPES = pytest.StashKey[list[tuple[str, int | None, float]]]()  # test_recipes.py: (file, exit code, seconds)
ARTIFACTS = Path(os.environ.get("SATUNE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# Chromium as root in a sandbox-less container, and no calls home (this network refuses them).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def pytest_terminal_summary(terminalreporter, config):
    """List the shipped sweep files test_recipes.py ran end to end, with their exit codes and times."""
    ran = config.stash.get(RECIPES, None)
    if ran:
        terminalreporter.section("sweeps/ run end to end on fabricated real-format data")
        for name, code, seconds in sorted(ran):
            terminalreporter.line(f"{name:28} exit {code}  {seconds:6.1f} s")


@pytest.fixture(scope="session")
def chromium():
    """Debian's headless Chromium driven by Playwright (no browser download): `make test` installs it."""
    from playwright.sync_api import sync_playwright

    path = shutil.which("chromium")
    if path is None:
        pytest.fail("no chromium on PATH: `make test` installs Debian's chromium package")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A fresh page that records console errors and failed requests in `page.problems`."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: page.problems.append(f"request failed: {r.url} ({r.failure})"))
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    """Keep a full-page screenshot under test-artifacts/ (CI keeps the folder)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite store, as a cluster would run it."""
    with LocalServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server.uri


@pytest.fixture(scope="session", autouse=True)
def ray_token(tmp_path_factory):
    """Every Ray of these tests (the shared head, each sweep's own) uses a token of the session,
    never the user's ~/.ray/auth_token; satune processes inherit the variable."""
    path = tmp_path_factory.mktemp("ray-token") / "auth_token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ.pop("RAY_AUTH_MODE", None)
    ensure_private_token()  # what docs/cluster.md asks before `ray start`
    yield path
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory, ray_token):
    """A Ray head started the way users start one: `ray start --head`, token auth on."""
    with ray_head(tmp_path_factory.getbasetemp()) as address:
        yield address


@contextmanager
def ray_head(basetemp: Path, num_cpus: int = 2, env: dict[str, str] | None = None) -> Iterator[str]:
    """Its workers inherit `env` (default: this process's environment)."""
    env = {**(env or os.environ), "RAY_USAGE_STATS_ENABLED": "0", "SATUNE_CACHE": str(basetemp / "satune-cache")}
    port = free_port()
    head = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--num-cpus",
            str(num_cpus),
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        status = [str(RAY), "status", "--address", address]
        wait_until(
            "the Ray head",
            lambda: subprocess.run(status, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True).returncode == 0,
            timeout=60,
        )
        yield address
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head, its raylet and GCS: one process group
        head.wait(timeout=60)


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
    return subprocess.run(
        [sys.executable, "-m", "satune.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kw,
    )


def start_satune(*args, env=None, **kw) -> subprocess.Popen:
    """In its own session (as a terminal's foreground job), so the test can signal its whole group."""
    kw = {"stdout": subprocess.PIPE, **kw}  # (a file, for output that may outgrow a pipe's buffer)
    return subprocess.Popen(
        [sys.executable, "-m", "satune.cli", *map(str, args)],
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        **kw,
    )


def kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def wait_until(what: str, ready: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 300):
    """Poll until `ready()`; fail the test (never carry on) when the deadline passes or `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"satune exited ({proc.returncode}) before {what}:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def run_dir_of(tmp_path: Path, name: str) -> Path:
    (run_dir,) = (tmp_path / "runs" / name).iterdir()
    return run_dir


def tune_dir_of(run_dir: Path) -> Path:
    """Tune's experiment folder: a name of its own per run (two sweeps must never share Tune's staging)."""
    return run_dir / json.loads((run_dir / "sweep.json").read_text())["tune_name"]


def state_of(tmp_path: Path, name: str) -> dict:
    return json.loads((run_dir_of(tmp_path, name) / "sweep.json").read_text())
