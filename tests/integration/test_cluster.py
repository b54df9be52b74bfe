"""Several nodes on this machine with Ray's own test cluster (ray.cluster_utils.Cluster), token auth
on, joined by `satune sweep --address` as a user joins a cluster: trials spread over the nodes, land
only where their resources are, and survive the loss of a node."""

import json
import os
import subprocess
import sys

import optuna
import pytest
from conftest import satune, smoke_file, start_satune, wait_until
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from satune.specs import load_sweep
from satune.sweep.rundir import JOURNAL_FILE, latest_run_dir
from satune.tracking import PARENT_TAG

pytestmark = pytest.mark.integration

# Holds the cluster in a process of its own (the test process stays a plain client, as satune is),
# and changes it on command: `add NAME CPUS GPUS [IP]` (a node with the custom resource NAME and the
# label satune.test/name=NAME; another
# loopback IP makes it look like another machine), `kill NAME`.
HOLDER = """
import json, sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
nodes = {}
print(json.dumps({"address": cluster.address}), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "add":
        node = cluster.add_node(num_cpus=float(args[1]), num_gpus=float(args[2]), resources={args[0]: 1},
                                labels={"satune.test/name": args[0]}, **({"node_ip_address": args[3]} if args[3:] else {}))
        cluster.wait_for_nodes()
        nodes[args[0]] = node
        print(json.dumps({"node": args[0], "id": node.node_id}), flush=True)
    elif cmd == "kill":
        cluster.remove_node(nodes.pop(args[0]), allow_graceful=False)
        print(json.dumps({"killed": args[0]}), flush=True)
cluster.shutdown()
"""


class LocalCluster:
    def __init__(self):
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.address = self._answer()["address"]
        self.nodes: dict[str, str] = {}  # name -> Ray node id

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"the test cluster exited ({self.proc.wait()})")
        return json.loads(line)

    def add(self, name: str, cpus: float, gpus: float = 0, ip: str = "") -> str:
        self.proc.stdin.write(f"add {name} {cpus} {gpus} {ip}\n")
        self.proc.stdin.flush()
        self.nodes[name] = self._answer()["id"]
        return self.nodes[name]

    def kill(self, name: str) -> None:
        self.proc.stdin.write(f"kill {name}\n")
        self.proc.stdin.flush()
        self._answer()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)


@pytest.fixture
def cluster():
    """A head that offers no CPUs, and two worker nodes: `a` (1 CPU) and `b` (1 CPU, 1 fake GPU)."""
    c = LocalCluster()
    try:
        c.add("a", 1)
        c.add("b", 1, 1)
        yield c
    finally:
        c.close()


def trials_of(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)  # (None until the sweep has made it)
    runs = client.search_runs([experiment.experiment_id], max_results=100) if experiment else []
    return [r for r in runs if PARENT_TAG in r.data.tags]


def node_of(run) -> str:
    return run.data.tags["satune.node"].split()[0]


def test_trials_spread_over_the_nodes_and_a_gpu_trial_lands_where_the_gpu_is(tmp_path, mlflow_server, cluster):
    spread = smoke_file(tmp_path, "spread", mlflow_server, **{"search.num_samples": 4, "trial.train.epochs": 3})
    done = satune("sweep", spread, "--address", cluster.address, "--no-report", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = trials_of(mlflow_server, "spread")
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    assert {node_of(t) for t in trials} == {cluster.nodes["a"], cluster.nodes["b"]}  # both; never the head

    gpu = smoke_file(
        tmp_path,
        "gpu",
        mlflow_server,
        **{"search.num_samples": 2, "trial.train.epochs": 1, "resources": {"cpu": 1, "gpu": 1, "max_concurrent": 2}},
    )
    done = satune("sweep", gpu, "--address", cluster.address, "--no-report", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = trials_of(mlflow_server, "gpu")
    assert len(trials) == 2 and {node_of(t) for t in trials} == {cluster.nodes["b"]}


def test_trials_run_only_on_nodes_their_label_selector_admits(tmp_path, mlflow_server, cluster):
    pinned = smoke_file(
        tmp_path,
        "pinned",
        mlflow_server,
        **{
            "search.num_samples": 3,
            "trial.train.epochs": 1,
            "resources.label_selector": {"satune.test/name": "in(b,c)"},
        },
    )
    done = satune("sweep", pinned, "--address", cluster.address, "--no-report", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    trials = trials_of(mlflow_server, "pinned")
    assert len(trials) == 3 and {node_of(t) for t in trials} == {cluster.nodes["b"]}  # a is free, and never used

    nowhere = smoke_file(tmp_path, "nowhere", mlflow_server, **{"resources.label_selector": {"satune.test/name": "c"}})
    done = satune("sweep", nowhere, "--address", cluster.address, "--no-report", cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: resources: a trial needs cpu 1, gpu 0, satune.test/name: c but no node has that")
    assert "satune.test/name=a" in line and "satune.test/name=b" in line
    assert not (tmp_path / "runs" / "nowhere").exists() and trials_of(mlflow_server, "nowhere") == []


@pytest.fixture(params=["folder", "s3"])
def storage(request, tmp_path) -> str:
    """A folder every node mounts, or an S3 bucket every node reaches (set up before `cluster`,
    whose nodes then start with the bucket's variables, as their own credentials)."""
    return str(tmp_path / "runs") if request.param == "folder" else request.getfixturevalue("s3") + "/sweeps"


def test_a_node_lost_mid_trial_continues_the_trial_from_its_checkpoint_elsewhere(
    tmp_path, mlflow_server, storage, cluster
):
    """Node `a` is killed while its trial trains; a new node `c` joins. The trial continues from its
    last checkpoint on another node, in the same MLflow run, and every epoch is logged once."""
    epochs = 30
    name = "nodeloss-s3" if storage.startswith("s3://") else "nodeloss"  # (one MLflow server for the session)
    sweep = smoke_file(
        tmp_path, name, mlflow_server, storage=storage, **{"trial.train.epochs": epochs, "max_failures": 2}
    )
    proc = start_satune("sweep", sweep, "--address", cluster.address, "--no-report")

    def a_trial_on_a_has_trained() -> bool:
        on_a = [
            t
            for t in trials_of(mlflow_server, name)
            if t.data.tags.get("satune.node", "").startswith(cluster.nodes["a"])
        ]
        return bool(on_a) and on_a[0].data.metrics.get("epoch", 0) >= 2

    wait_until("a trial on node a past epoch 2", a_trial_on_a_has_trained, proc)
    (moved,) = [t.info.run_id for t in trials_of(mlflow_server, name) if node_of(t) == cluster.nodes["a"]]
    cluster.kill("a")
    cluster.add("c", 1)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output

    client = MlflowClient(mlflow_server)
    trials = trials_of(mlflow_server, name)
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)  # one run each, no new one
    for t in trials:
        steps = sorted(m.step for m in client.get_metric_history(t.info.run_id, "train/loss"))
        assert steps == list(range(epochs)), t.info.run_id  # every epoch once
    after = client.get_run(moved).data.tags
    assert int(after["satune.resumed_after_epoch"]) >= 1  # from its checkpoint, not from scratch
    assert after["satune.node"].split()[0] != cluster.nodes["a"]
    run_dir = latest_run_dir(load_sweep(sweep))  # (from the bucket: its state and journal)
    assert run_dir is not None
    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(run_dir / JOURNAL_FILE))))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert json.loads((run_dir / "sweep.json").read_text())["status"] == "finished"


def test_a_local_tracking_server_is_refused_when_the_cluster_spans_machines(tmp_path, cluster):
    """Trials on another machine cannot reach satune's MLflow server on this one's 127.0.0.1."""
    sweep = smoke_file(tmp_path, "far", None)  # (nodes on one machine share it: test_sweep.py joins one so)
    cluster.add("far", 1, ip="127.0.0.2")
    done = satune("sweep", sweep, "--address", cluster.address, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "has 2 machines" in line and "set tracking.uri to a shared http(s):// server" in line
    assert not (tmp_path / "runs").exists()  # refused before anything was written
