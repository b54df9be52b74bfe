"""Sweeps on a local multi-node Ray cluster (Ray's own test cluster, every node on this machine):

1. makespan of one sweep on a head + N worker nodes (1 CPU each) against the same sweep on a head
   + 1 worker node with N CPUs, for N = 2 and 3: the same slots, so the ratio is what spreading over
   nodes costs (N = 3 runs 3 trials at once on this 2-core machine: both layouts share that
   oversubscription);
2. recovery after a node loss: from killing the node a trial trains on to that trial running again
   on another node from its last checkpoint (its MLflow run re-opened: the time Ray takes to declare
   the node dead, Tune's retry, the new actor's start-up and the restore).

Everything runs from this process, one after another, with a local MLflow server:

    .venv/bin/python bench/cluster.py [--trials 6] [--epochs 6] [--nodes 2 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from satune.tracking import PARENT_TAG, LocalServer
from satune.tune.cluster import ensure_private_token

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(tmp: Path, name: str, uri: str, trials: int, epochs: int, slots: int = 2) -> Path:
    data = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    data.update(name=name, storage=str(tmp / "runs"), tracking={"uri": uri, "experiment": name})
    data["search"]["num_samples"] = trials
    data["resources"]["max_concurrent"] = slots
    data["trial"]["train"]["epochs"] = epochs
    data["max_failures"] = 3
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sweep(path: Path, address: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "satune.cli", "sweep", str(path), "--address", address, "--no-report", "--plain"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def new_cluster():
    """Ray's test cluster: a head that offers no CPUs (imported late: Ray reads RAY_AUTH_MODE on import)."""
    from ray.cluster_utils import Cluster

    return Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})


def makespan(tmp: Path, uri: str, name: str, workers: list[int], trials: int, epochs: int) -> float:
    cluster = new_cluster()
    try:
        for cpus in workers:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        t0 = time.perf_counter()
        proc = sweep(sweep_file(tmp, name, uri, trials, epochs, slots=sum(workers)), cluster.address)
        if proc.wait() != 0:
            raise SystemExit(f"sweep {name} failed ({proc.returncode})")
        return time.perf_counter() - t0
    finally:
        cluster.shutdown()


def trials_of(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if PARENT_TAG in r.data.tags]


def recovery(tmp: Path, uri: str, epochs: int) -> float:
    client = MlflowClient(uri)
    cluster = new_cluster()
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        proc = sweep(sweep_file(tmp, "recovery", uri, 1, epochs), cluster.address)
        while True:  # the trial past its second epoch: on which node?
            found = [t for t in trials_of(client, "recovery") if t.data.metrics.get("epoch", 0) >= 1]
            if found:
                break
            time.sleep(0.2)
        (run,) = found
        node_id = run.data.tags["satune.node"].split()[0]
        (victim,) = [n for n in nodes if n.node_id == node_id]
        cluster.remove_node(victim, allow_graceful=False)
        t0 = time.perf_counter()
        while "satune.resumed_after_epoch" not in client.get_run(run.info.run_id).data.tags:  # restarted elsewhere
            if proc.poll() is not None:
                raise SystemExit(f"the sweep ended ({proc.returncode}) before the trial ran again")
            time.sleep(0.2)
        took = time.perf_counter() - t0
        proc.wait()
        return took
    finally:
        cluster.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--nodes", type=int, nargs="+", default=[2, 3], help="worker-node counts to compare")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(tmp / "ray-token")
        os.environ["RAY_AUTH_MODE"] = "token"
        ensure_private_token()
        with LocalServer(tmp / "mlflow") as server:
            spans = {
                n: (
                    makespan(tmp, server.uri, f"one-node-{n}", [n], args.trials, args.epochs),
                    makespan(tmp, server.uri, f"{n}-nodes", [1] * n, args.trials, args.epochs),
                )
                for n in args.nodes
            }
            lost = recovery(tmp, server.uri, epochs=60)
    for n, (one, many) in spans.items():
        print(
            f"{args.trials} trials × {args.epochs} epochs, {n} slots: head + 1 worker ({n} CPUs) {one:.1f} s, "
            f"head + {n} workers (1 CPU each) {many:.1f} s, ratio {many / one:.2f}"
        )
    print(f"node lost mid-trial → the trial running again on another node, from its checkpoint: {lost:.1f} s")


if __name__ == "__main__":
    main()
