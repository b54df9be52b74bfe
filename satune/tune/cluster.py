"""Ray: a private local instance (dashboard on 127.0.0.1, token auth kept on) or a running cluster."""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from satune.errors import UserError
from satune.tune import upstream


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
            ctx = ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=free_port(),
                **common,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ClusterError(f"cannot start or join {where}: {str(exc).splitlines()[0]}") from None
    return f"http://{ctx.dashboard_url}" if ctx.dashboard_url else None


def preflight(address: str, timeout: float = 5.0) -> None:
    """Before Ray is joined (and anything written): ask the cluster's GCS, in one request each,
    whether it answers, takes this shell's token, and runs this process's Ray and Python.

    ray.init would otherwise retry an unauthenticated connection for 20 s and then blame the
    network, and report a version mismatch over several lines. `auto` and ray:// addresses are
    left to ray.init."""
    import grpc  # type: ignore[import-untyped]

    pb, stubs = upstream.gcs_stubs()

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    token = _local_token()
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address) as channel:
        try:
            stubs.NodeInfoGcsServiceStub(channel).GetClusterId(
                pb.GetClusterIdRequest(), timeout=timeout, metadata=metadata
            )
            reply = stubs.InternalKVGcsServiceStub(channel).InternalKVGet(
                pb.InternalKVGetRequest(namespace=b"cluster", key=b"CLUSTER_METADATA"),
                timeout=timeout,
                metadata=metadata,
            )
        except grpc.RpcError as exc:
            raise ClusterError(_rpc_failure(address, exc, token)) from None
    if reply.value:
        check_versions(address, json.loads(reply.value))


def _local_token() -> str | None:
    """The token ray.init would send: RAY_AUTH_TOKEN, else the token file (None without one, or
    when RAY_AUTH_MODE turns token auth off)."""
    if not _token_auth():
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = token_path()
    return path.read_text().strip() if path.is_file() else None


def _rpc_failure(address: str, exc: Any, token: str | None) -> str:
    import grpc

    code = exc.code()
    if code == grpc.StatusCode.UNAUTHENTICATED and not _token_auth():
        return (
            f"the Ray cluster at {address} uses token authentication, and RAY_AUTH_MODE="
            f"{os.environ['RAY_AUTH_MODE']} turns it off here: set RAY_AUTH_MODE=token"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED and token is None:
        return (
            f"the Ray cluster at {address} uses token authentication and this shell has no token: run "
            f"`ray get-auth-token` on the head node and put the token in RAY_AUTH_TOKEN or {token_path()}"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        where = "RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else str(token_path())
        return (
            f"the Ray cluster at {address} refused the token in {where}: use the token that "
            "`ray get-auth-token` prints on the head node"
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return (
            f"no Ray cluster answers at {address} (is `ray start --head --port {address.rpartition(':')[2]}` "
            "running there, and the port reachable from here?)"
        )
    return f"the Ray cluster at {address} answered {code.name}: {exc.details()}"


def check_versions(address: str, cluster: dict[str, Any]) -> None:
    """Ray refuses a driver whose Ray or Python (to the patch level) differ from the cluster's."""
    import platform

    import ray

    theirs = (cluster.get("ray_version"), str(cluster.get("python_version")))
    ours = (ray.__version__, platform.python_version())
    level = 2 if os.environ.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL") == "minor" else 3  # as Ray compares
    if theirs[0] != ours[0] or theirs[1].split(".")[:level] != ours[1].split(".")[:level]:
        raise ClusterError(
            f"version mismatch: the Ray cluster at {address} runs Ray {theirs[0]} on Python {theirs[1]}, "
            f"this process Ray {ours[0]} on Python {ours[1]}: run satune where the versions match "
            "(e.g. in the cluster's image: docs/cluster.md)"
        )


def _token_auth_like_ray_start() -> None:
    """`ray start` turns token auth on when a token exists, but a client that joins it does not
    (it fails after 20 s of InvalidAuthToken warnings): decide as `ray start` does. Ray reads
    RAY_AUTH_MODE into its config when imported, so the config is read again, as Ray itself does."""
    if "RAY_AUTH_MODE" in os.environ or not (os.environ.get("RAY_AUTH_TOKEN") or token_path().exists()):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    upstream.reload_ray_config()


def dashboard_hint(url: str | None) -> str:
    if not url:
        return "Ray dashboard: not running (install ray[default])"
    if not _token_auth():
        return f"Ray dashboard: {url} (token authentication disabled by RAY_AUTH_MODE)"
    return (
        f"Ray dashboard: {url}  (token auth on: sign in with the token that "
        f"`ray get-auth-token` prints, stored in {token_path()})"
    )


def check_one_machine_for_local_tracking(address: str) -> None:
    """With `tracking.uri: null` satune serves MLflow on this machine's 127.0.0.1, which trials on
    another machine cannot reach, so a joined cluster of several machines is refused."""
    import ray

    machines = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    if len(machines) > 1:
        raise ClusterError(
            f"tracking.uri: the cluster at {address} has {len(machines)} machines, and trials on the "
            "others cannot reach a local MLflow server: set tracking.uri to a shared http(s):// server"
        )


def check_feasible(cpu: float, gpu: float, label_selector: dict[str, str] | None = None) -> None:
    """Fail at once when no node can host one trial, instead of letting Tune wait forever."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu]
    if any(selects(n.get("Labels", {}), label_selector or {}) for n in fits):
        return
    have = (
        "; ".join(
            f"CPU {n['Resources'].get('CPU', 0):g}, GPU {n['Resources'].get('GPU', 0):g}"
            + "".join(f", {k}={v}" for k, v in sorted(n.get("Labels", {}).items()) if k != "ray.io/node-id")
            for n in nodes
        )
        or "no nodes"
    )
    labels = "".join(f", {k}: {v}" for k, v in (label_selector or {}).items())
    raise ClusterError(f"resources: a trial needs cpu {cpu:g}, gpu {gpu:g}{labels} but no node has that ({have})")


def selects(labels: dict[str, str], selector: dict[str, str]) -> bool:
    """Ray's label-selector semantics: `v`, `!v`, `in(a,b)`, `!in(a,b)`; a missing label matches
    only the negated forms."""
    for key, value in selector.items():
        negated = value.startswith("!")
        value = value.removeprefix("!")
        options = value[3:-1] if value.startswith("in(") else value
        hit = labels.get(key) in {o.strip() for o in options.split(",")}
        if hit == negated:
            return False
    return True


def trial_resources(res: Any) -> Any:
    """What Tune reserves for one trial: a placement group of one bundle, on a node the label
    selector (if any) admits."""
    from ray import tune

    bundle = {"CPU": res.cpu} | ({"GPU": res.gpu} if res.gpu else {})
    if res.label_selector:
        return tune.PlacementGroupFactory([bundle], bundle_label_selector=[dict(res.label_selector)])
    return tune.PlacementGroupFactory([bundle])


def ray_options(res: Any) -> dict[str, Any]:
    """`ray.remote` options for a task with these resources (a TaskResourcesSpec)."""
    selector = {"label_selector": dict(res.label_selector)} if res.label_selector else {}
    return {"num_cpus": res.cpu, "num_gpus": res.gpu} | selector


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
