"""Ray: a private local instance (dashboard on 127.0.0.1, token auth kept on) or a running cluster."""

from __future__ import annotations

import logging
import os
from pathlib import Path


class ClusterError(Exception):
    """Ray cannot give this sweep what it needs; a one-line message for the user."""


def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def start(address: str | None = None, num_cpus: int | None = None) -> str | None:
    """Join `address` (or SATUNE_RAY_ADDRESS), else start a private Ray for this process; returns
    the dashboard's URL (None without one).

    `address="local"` always starts a new instance: a plain ray.init() may try to join a stale one.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("SATUNE_RAY_ADDRESS")
    common = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": False}
    try:
        if address:
            ctx = ray.init(address=address, **common)
        else:
            from satune.tracking import free_port

            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                           dashboard_port=free_port(), **common)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(f"cannot start or join {where}: {str(exc).splitlines()[0]}") from None
    return f"http://{ctx.dashboard_url}" if ctx.dashboard_url else None


def dashboard_hint(url: str | None) -> str:
    if not url:
        return "Ray dashboard: not running (install ray[default])"
    auth = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if auth == "disabled":
        return f"Ray dashboard: {url} (token authentication disabled by RAY_AUTH_MODE)"
    return (f"Ray dashboard: {url}  (token auth on: sign in with the token that "
            f"`ray get-auth-token` prints, stored in {token_path()})")  # fmt: skip


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
