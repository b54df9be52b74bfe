"""Pre-flight: what a user gets wrong when joining a cluster or a shared MLflow server is said in
one line, within seconds, before a run directory or any MLflow run exists (exit 2)."""

import json
import time

import grpc
from conftest import ray_head, satune, smoke_file
from mlflow.tracking import MlflowClient
from ray.core.generated import gcs_service_pb2 as pb
from ray.core.generated import gcs_service_pb2_grpc as stubs

from satune.tracking import check_server, free_port
from satune.tune.cluster import token_path


def refused(tmp_path, mlflow_server, address: str, env: dict | None = None, name: str = "refused") -> str:
    """Run a sweep that must be refused: its one error line (nothing written, no MLflow run, fast)."""
    sweep = smoke_file(tmp_path, name, mlflow_server)
    start = time.monotonic()
    done = satune("sweep", sweep, "--address", address, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - start < 30  # not Ray's 20 s of retries, then a word about the network
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    assert not (tmp_path / "runs").exists()
    assert MlflowClient(mlflow_server).get_experiment_by_name(name) is None
    return line


def test_a_token_auth_cluster_and_no_token_here_says_where_the_token_goes(tmp_path, mlflow_server, ray_address):
    line = refused(tmp_path, mlflow_server, ray_address, env={"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})
    assert line == (
        f"error: the Ray cluster at {ray_address} uses token authentication and this shell has no "
        f"token: run `ray get-auth-token` on the head node and put the token in RAY_AUTH_TOKEN or "
        f"{tmp_path / 'none'}"
    )


def test_a_wrong_token_is_named(tmp_path, mlflow_server, ray_address):
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    line = refused(tmp_path, mlflow_server, ray_address, env={"RAY_AUTH_TOKEN_PATH": str(wrong)})
    assert line.startswith(f"error: the Ray cluster at {ray_address} refused the token in {wrong}")
    line = refused(tmp_path, mlflow_server, ray_address, env={"RAY_AUTH_TOKEN": "1" * 64}, name="refused2")
    assert line.startswith(f"error: the Ray cluster at {ray_address} refused the token in RAY_AUTH_TOKEN")


def test_token_auth_turned_off_here_is_named(tmp_path, mlflow_server, ray_address):
    line = refused(tmp_path, mlflow_server, ray_address, env={"RAY_AUTH_MODE": "disabled"})
    assert line.endswith("RAY_AUTH_MODE=disabled turns it off here: set RAY_AUTH_MODE=token")


def test_no_cluster_at_the_address(tmp_path, mlflow_server):
    address = f"127.0.0.1:{free_port()}"
    line = refused(tmp_path, mlflow_server, address)
    assert line.startswith(f"error: no Ray cluster answers at {address} (is `ray start --head --port")


def test_a_cluster_of_another_ray_version_is_refused_in_one_line(tmp_path_factory, tmp_path, mlflow_server):
    """The versions Ray itself compares, from the cluster's own record in its GCS (rewritten here, as
    if the head ran another release)."""
    import platform

    import ray

    with ray_head(tmp_path_factory.getbasetemp(), num_cpus=1) as address:
        token = [("authorization", f"Bearer {token_path().read_text().strip()}")]
        key = {"namespace": b"cluster", "key": b"CLUSTER_METADATA"}
        with grpc.insecure_channel(address) as channel:
            kv = stubs.InternalKVGcsServiceStub(channel)
            record = json.loads(kv.InternalKVGet(pb.InternalKVGetRequest(**key), metadata=token).value)
            assert record["ray_version"] == ray.__version__  # what the head wrote at start
            record["ray_version"] = "2.9.3"
            kv.InternalKVPut(
                pb.InternalKVPutRequest(**key, value=json.dumps(record).encode(), overwrite=True), metadata=token
            )
        line = refused(tmp_path, mlflow_server, address)
    assert line == (
        f"error: version mismatch: the Ray cluster at {address} runs Ray 2.9.3 on Python "
        f"{record['python_version']}, this process Ray {ray.__version__} on Python "
        f"{platform.python_version()}: run satune where the versions match (e.g. in the cluster's "
        "image: docs/cluster.md)"
    )


def test_the_mlflow_server_version_is_read_from_the_server(mlflow_server):
    check_server(mlflow_server)  # the suite's real server runs this client's MLflow: accepted
