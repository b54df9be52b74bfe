import os
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A suite started in the background by a shell without job control (`make test &`) inherits SIGINT
# ignored, and so would every process it starts: the Ctrl-C tests would see satune carry on.
# A handler here is reset to the default in each child (exec keeps only "ignored").
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Rankings and embedded data go to a per-session cache, never the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "satune-cache"
    monkeypatch.setenv("SATUNE_CACHE", str(cache))
    yield


@pytest.fixture
def device():
    import torch

    return torch.device(os.environ.get("SATUNE_TEST_DEVICE", "cpu"))


class S3Endpoint:
    """An S3 endpoint on 127.0.0.1: moto's server speaks S3's HTTP API (objects kept in memory),
    where a MinIO would in a lab; every client reaches it through AWS_ENDPOINT_URL. Stopped and
    started again, on its port, it keeps its buckets: they live in this process, as a real store's
    live on its disks."""

    def __init__(self):
        import logging
        import socket

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="session")
def s3_server():
    endpoint = S3Endpoint()
    yield endpoint.url
    endpoint.stop()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "satune-test",
    "AWS_SECRET_ACCESS_KEY": "satune-test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def new_bucket(endpoint: str, monkeypatch, tmp_path) -> str:
    """A fresh bucket (its s3:// URL), and the variables every S3 client here reads (satune's,
    Tune's, Ray workers' started from this environment); runs' local folders in tmp_path."""
    import uuid

    import boto3
    import s3fs

    for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint, "SATUNE_MIRROR": str(tmp_path / "mirror")}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # (fsspec reuses a filesystem made under other variables)
    bucket = f"satune-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    yield new_bucket(s3_server, monkeypatch, tmp_path)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_endpoint(monkeypatch, tmp_path):
    """A bucket on an endpoint of the test's own, which the test may stop and start again."""
    endpoint = S3Endpoint()
    yield new_bucket(endpoint.url, monkeypatch, tmp_path), endpoint
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    endpoint.stop()
