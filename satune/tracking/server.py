"""The tracking server: satune's local `mlflow server` (started, watched, restarted), the checks
made on a user's server, and serving until Ctrl-C (`satune ui`)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from satune.errors import UserError


class TrackingError(UserError):
    """The tracking server cannot be started or reached; a one-line message for the user."""


# --------------------------------------------------------------------------------------------
# The server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def watched(uri: str, patience: float, on_lost: Callable[[str], None], every: float = 2.0):
    """While the block runs, a server that has not answered for `patience` seconds is lost:
    `on_lost(why)` is called once (from another thread)."""
    from satune.watchdog import watched

    def probe() -> str | None:
        try:
            check_reachable(uri, timeout=every)
        except TrackingError:
            return f"the MLflow server at {uri} has not answered for {patience:.0f}s"
        return None

    return watched(probe, patience, on_lost, every, name="mlflow-watch")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any compute, when an MLflow server does not answer."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status == 200:
                return
            raise TrackingError(f"tracking.uri: {uri} answered {resp.status} on /health; is it an MLflow server?")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"tracking.uri: cannot reach the MLflow server at {uri} ({reason})") from None
    except http.client.HTTPException as exc:  # something else listens there (a gRPC port, say)
        raise TrackingError(
            f"tracking.uri: {uri} answers, but not as an HTTP server ({type(exc).__name__}); is it an MLflow server?"
        ) from None


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Before any run is created: the server answers, lets this client in, and runs this client's
    MLflow (major.minor; runs, logged models and the UI's tags change between minor versions)."""
    from importlib.metadata import version

    check_reachable(uri, timeout)
    request = urllib.request.Request(uri.rstrip("/") + "/version")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:  # a basic-auth server (docker/compose.auth.yaml) asks for them everywhere
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            theirs = resp.read().decode().strip()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise TrackingError(
                f"tracking.uri: the MLflow server at {uri} refused this client ({exc.code}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        raise TrackingError(f"tracking.uri: {uri} answered {exc.code} on /version; is it an MLflow server?") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise TrackingError(
            f"tracking.uri: cannot reach the MLflow server at {uri} ({getattr(exc, 'reason', exc)})"
        ) from None
    check_version_match(uri, theirs, version("mlflow"))


def check_version_match(uri: str, server: str, client: str) -> None:
    if server.split(".")[:2] != client.split(".")[:2]:
        raise TrackingError(
            f"version mismatch: the MLflow server at {uri} runs MLflow {server}, this client MLflow "
            f"{client}: install mlflow=={server} here, or run the server with mlflow=={client}"
        )


def store_paths(storage: Path) -> tuple[Path, Path]:
    """The local store under `storage`: the SQLite database and the artifact root."""
    root = Path(storage) / "mlflow"
    return root / "mlflow.db", root / "artifacts"


def server_command(db: Path, artifacts: Path, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def server_env() -> dict[str, str]:
    # Without the job runner the server is 2 processes and ~0.5 GB instead of ~2.3 GB.
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


_STOPS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _stops_held() -> Iterator[None]:
    """Ctrl-C (and SIGTERM) held back while the block forks, and raised again after it. Python
    drops a KeyboardInterrupt raised in its at-fork hooks ("Exception ignored"), and the sweep
    would carry on. Blocking the signals is not enough: another thread (Ray has several)
    takes the signal, and the main thread still runs the handler inside those hooks. Here the
    handler only notes it. (Handlers run in the main thread only: elsewhere nothing is dropped.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {stop: signal.signal(stop, lambda signum, _: held.append(signum)) for stop in _STOPS}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies, even by SIGKILL,
    so a killed sweep never leaves an orphaned server behind. (A no-op elsewhere.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 15)


@contextmanager
def serving(
    uri: str | None, storage: str, first: str, host: str = "127.0.0.1", port: int | None = None
) -> Iterator[tuple[str, LocalServer | None]]:
    """A finished sweep's tracking server, for reading it: its own `uri` (checked to answer), or in
    local mode (`uri` None) its store under `storage`, served while the block runs. `first`: the
    command that makes the store, named when there is none."""
    if uri is not None:
        check_reachable(uri)
        yield uri, None
        return
    if not store_paths(Path(storage))[0].exists():
        raise TrackingError(f"no MLflow store under {storage}: run `{first}` first")
    with LocalServer(Path(storage), host, port) as server:
        yield server.uri, server


class LocalServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store under `storage`, for one sweep."""

    def __init__(self, storage: Path, host: str = "127.0.0.1", port: int | None = None):
        self.db, self.artifacts = store_paths(storage)
        self.host, self.port = host, port or free_port(host)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.db.parent / "server.log"

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 120.0) -> LocalServer:
        self.launch()
        try:
            self.wait_healthy(timeout)
        except BaseException:  # Ctrl-C while it starts too: no server outlives the sweep
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """Start the server process and return at once (wait_healthy waits for it to answer)."""
        self.db.parent.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - the server writes here for its lifetime
        try:
            with _stops_held():
                self.proc = subprocess.Popen(
                    server_command(self.db, self.artifacts, self.host, self.port),
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=server_env(),
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
        finally:
            logf.close()

    def wait_healthy(self, timeout: float = 120.0, moves: int = 3) -> None:
        """Until the server answers. Its port was free when chosen, but another process (Ray starts
        many beside it) may bind it first: the server then exits at start, and moves to a free port
        (at most `moves` times; the port is in nobody's hands yet, the URI is read after this)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if moves > 0 and not _bindable(self.host, self.port):
                    moves -= 1
                    self.port = free_port(self.host)
                    self.launch()
                    continue
                raise TrackingError(f"the local MLflow server exited at start; see {self.log_path}")
            try:
                check_reachable(self.uri, timeout=1.0)
                return
            except TrackingError:
                time.sleep(0.3)
        raise TrackingError(f"the local MLflow server did not answer within {timeout:.0f}s; see {self.log_path}")

    @contextmanager
    def restarted_when_dead(self, echo: Callable[[str], None], limit: int = 3) -> Iterator[LocalServer]:
        """While the block runs, a server that dies (killed, out of memory) starts again on the same
        store and port. Trials' requests wait meanwhile (MLflow's client retries with backoff), so
        nothing they log is lost. After `limit` restarts it stays down: trials then fail, resumably."""
        done = threading.Event()

        def watch() -> None:  # (the thread that starts a server must outlive it: _die_with_parent)
            restarts = 0
            while not done.wait(1.0):
                proc = self.proc
                if proc is None or proc.poll() is None:
                    continue
                if restarts == limit:
                    echo(
                        f"MLflow: the local server died {limit + 1} times; not starting it again (see {self.log_path})"
                    )
                    return
                restarts += 1
                echo(f"MLflow: the local server died (exit {proc.returncode}); starting it again on {self.uri}")
                try:
                    self.start()
                except TrackingError as exc:
                    echo(f"MLflow: {exc}")

        thread = threading.Thread(target=watch, name="mlflow-watchdog", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, 15)  # the server and its worker
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, 9)
        self.proc = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Served(Protocol):
    """A server `satune ui` keeps up: the local MLflow server, optuna-dashboard."""

    @property
    def uri(self) -> str: ...

    @property
    def running(self) -> bool: ...


def serve_until_interrupted(servers: Sequence[Served]) -> None:
    """Block until Ctrl-C (KeyboardInterrupt) or until one of `servers` stops (TrackingError)."""
    while all(s.running for s in servers):
        time.sleep(0.5)
    stopped = next(s for s in servers if not s.running)
    log = f"; see {stopped.log_path}" if isinstance(stopped, LocalServer) else ""
    raise TrackingError(f"the server at {stopped.uri} stopped{log}")


def open_in_browser(url: str) -> None:
    """Open `url` where a graphical browser can show it; on a headless machine `webbrowser` would
    start a console browser in the terminal instead."""
    import webbrowser

    if sys.platform in ("darwin", "win32") or any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY")):
        webbrowser.open(url)
