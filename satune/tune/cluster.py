"""Ray: a private local instance (dashboard on 127.0.0.1, token auth kept on) or a running cluster."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

from satune.errors import UserError


class ClusterError(UserError):
    """Ray cannot give this sweep what it needs; a one-line message for the user."""


def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def _token_auth() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "token").lower() == "token"


def ensure_private_token() -> None:
    """Token auth needs a token file; Ray writes one with the default umask (readable by every
    user of the machine), so satune writes it first, readable by its owner alone, and tightens
    one it finds open. The token is Ray's format: 32 random bytes in hex."""
    if not _token_auth() or os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
            logging.getLogger("satune").warning("made the Ray token %s readable by its owner only", path)
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def start(address: str | None = None, num_cpus: int | None = None) -> str | None:
    """Join `address` (or SATUNE_RAY_ADDRESS), else start a private Ray for this process; returns
    the dashboard's URL (None without one).

    `address="local"` always starts a new instance: a plain ray.init() may try to join a stale one.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("SATUNE_RAY_ADDRESS")
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": False}
    try:
        if address:
            _token_auth_like_ray_start()
            ctx = ray.init(address=address, **common)
        else:
            from satune.tracking import free_port

            ensure_private_token()
            _token_auth_like_ray_start()  # said explicitly: Ray would print a warning that it chose it
            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                           dashboard_port=free_port(), **common)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(f"cannot start or join {where}: {str(exc).splitlines()[0]}") from None
    return f"http://{ctx.dashboard_url}" if ctx.dashboard_url else None


def _token_auth_like_ray_start() -> None:
    """`ray start` turns token auth on when a token exists, but a client that joins it does not
    (it fails after 20 s of InvalidAuthToken warnings): decide as `ray start` does. Ray reads
    RAY_AUTH_MODE into its config when imported, so the config is read again, as Ray itself does."""
    if "RAY_AUTH_MODE" in os.environ or not (os.environ.get("RAY_AUTH_TOKEN") or token_path().exists()):
        return
    from ray._raylet import Config  # type: ignore[attr-defined]

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")


def dashboard_hint(url: str | None) -> str:
    if not url:
        return "Ray dashboard: not running (install ray[default])"
    if not _token_auth():
        return f"Ray dashboard: {url} (token authentication disabled by RAY_AUTH_MODE)"
    return (f"Ray dashboard: {url}  (token auth on: sign in with the token that "
            f"`ray get-auth-token` prints, stored in {token_path()})")  # fmt: skip


def check_one_node_for_local_tracking(address: str) -> None:
    """Before anything is written: with `tracking.uri: null` satune serves MLflow on this machine's
    127.0.0.1, which trials on another node cannot reach, so a cluster of several nodes is refused."""
    import ray

    start(address)
    try:
        nodes = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    finally:
        stop()
    if len(nodes) > 1:
        raise ClusterError(f"tracking.uri: the cluster at {address} has {len(nodes)} machines, and trials on the others "
                           "cannot reach a local MLflow server: set tracking.uri to a shared http(s):// server")  # fmt: skip


def check_feasible(cpu: float, gpu: float) -> None:
    """Fail at once when no node can host one trial, instead of letting Tune wait forever."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return
    have = "; ".join(f"CPU {n.get('CPU', 0):g}, GPU {n.get('GPU', 0):g}" for n in nodes) or "no nodes"
    raise ClusterError(f"resources: a trial needs cpu {cpu:g}, gpu {gpu:g} but no node has that ({have})")


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
