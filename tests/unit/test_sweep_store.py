"""Storage at an object store's URL, against a real S3 API on 127.0.0.1 (tests/conftest.py)."""

import json
import logging
import pickle

import pytest

from satune.specs import parse_sweep
from satune.sweep.rundir import JOURNAL_FILE, STATE_FILE, SweepError, latest_run_dir, prepare
from satune.sweep.store import Storage, StorageError


def sweep(storage: str):
    return parse_sweep(
        {
            "name": "t",
            "storage": storage,
            "tracking": {"uri": "http://127.0.0.1:5000"},
            "trial": {"data": {"dataset": "digits"}, "threat": {"norm": "linf", "eps": 0.1}, "method": {"kind": "at"}},
            "search": {"space": {"train.lr": {"loguniform": [0.01, 0.1]}}},
        }
    )


def stored(url: str, *parts: str) -> bytes | None:
    return Storage(url).read(*parts)


def test_a_run_is_kept_in_the_bucket_and_resumed_on_a_machine_without_its_files(s3, tmp_path, monkeypatch):
    spec = sweep(f"{s3}/sweeps")
    source = tmp_path / "s.yaml"
    source.write_text("name: t\n")
    monkeypatch.setenv("SATUNE_MIRROR", str(tmp_path / "machine-a"))
    run = prepare(spec, source, resume=False)
    run_dir = run.claim()
    assert run_dir.is_relative_to(tmp_path / "machine-a" / "s3")
    assert json.loads(stored(s3, "sweeps", "t", run_dir.name, STATE_FILE))["status"] == "starting"
    assert run.location == f"{s3}/sweeps/t/{run_dir.name}"
    (run_dir / JOURNAL_FILE).write_bytes(b'{"op": 0}\n{"op": 1}\n{"op": 2, "half')  # Optuna mid-append
    run.save(status="interrupted")
    assert stored(s3, "sweeps", "t", run_dir.name, JOURNAL_FILE) == b'{"op": 0}\n{"op": 1}\n'  # whole records only

    # Another machine: nothing of machine A's is there; --resume fetches the run into the folder it
    # began in, which Tune's saved state names.
    for f in run_dir.iterdir():
        f.unlink()
    run_dir.rmdir()
    monkeypatch.setenv("SATUNE_MIRROR", str(tmp_path / "machine-b"))
    resumed = prepare(spec, source, resume=True)
    assert resumed.path == run_dir and resumed.state["status"] == "interrupted"
    assert (run_dir / JOURNAL_FILE).read_bytes() == b'{"op": 0}\n{"op": 1}\n'
    resumed.save(status="finished")
    with pytest.raises(SweepError, match="nothing to resume"):
        prepare(spec, source, resume=True)


def test_the_newer_copy_of_a_run_wins(s3, tmp_path, monkeypatch):
    """The local files are newer when the driver died before copying them up: they are kept."""
    monkeypatch.setenv("SATUNE_MIRROR", str(tmp_path / "mirror"))
    spec = sweep(s3)
    source = tmp_path / "s.yaml"
    source.write_text("name: t\n")
    run = prepare(spec, source, resume=False)
    run_dir = run.claim()
    (run_dir / JOURNAL_FILE).write_bytes(b"1\n")
    run.save(status="running")
    (run_dir / JOURNAL_FILE).write_bytes(b"1\n2\n")  # written, not yet copied up
    state = json.loads((run_dir / STATE_FILE).read_text())
    (run_dir / STATE_FILE).write_text(json.dumps({**state, "status": "interrupted", "revision": state["revision"] + 1}))
    assert latest_run_dir(spec) == run_dir
    assert (run_dir / JOURNAL_FILE).read_bytes() == b"1\n2\n"
    assert json.loads((run_dir / STATE_FILE).read_text())["status"] == "interrupted"
    (run_dir / JOURNAL_FILE).write_bytes(b"")  # and storage's when it is the newer one
    (run_dir / STATE_FILE).write_text(json.dumps({**state, "revision": 0}))
    assert latest_run_dir(spec) == run_dir
    assert (run_dir / JOURNAL_FILE).read_bytes() == b"1\n" and json.loads((run_dir / STATE_FILE).read_text()) == state
    # The run went on elsewhere (a higher revision there): its journal wins, even when this
    # machine's, with records it never copied up, is longer.
    (run_dir / JOURNAL_FILE).write_bytes(b"1\nlost on this machine\n")
    (run_dir / STATE_FILE).write_text(json.dumps({**state, "revision": 0}))
    assert latest_run_dir(spec) == run_dir and (run_dir / JOURNAL_FILE).read_bytes() == b"1\n"


def test_two_machines_starting_in_the_same_second_get_two_runs(s3, tmp_path, monkeypatch):
    import time

    real = time.strftime  # (S3's request signing formats times too)
    monkeypatch.setattr(
        time, "strftime", lambda fmt, *t: "20261124-101010" if fmt == "%Y%m%d-%H%M%S" else real(fmt, *t)
    )
    source = tmp_path / "s.yaml"
    source.write_text("name: t\n")
    names = []
    for machine in ("a", "b"):
        monkeypatch.setenv("SATUNE_MIRROR", str(tmp_path / machine))
        names.append(prepare(sweep(s3), source, resume=False).claim().name)
    assert names == ["20261124-101010", "20261124-101010-2"]


def test_storage_that_cannot_be_written_is_one_line(s3, monkeypatch):
    Storage(f"{s3}/sweeps").check()  # writable: no error, and no probe left behind
    assert Storage(s3).fs.find(s3.removeprefix("s3://")) == []
    with pytest.raises(
        StorageError, match=r"^storage: cannot write to s3://satune-no-such-bucket/x: FileNotFoundError"
    ):
        Storage("s3://satune-no-such-bucket/x").check()
    with pytest.raises(StorageError, match=r"^storage: cannot open nosuchfs://x: .*fsspec package"):
        Storage("nosuchfs://x").check()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(StorageError) as err:
        Storage(f"{s3}/sweeps").check()
    assert "\n" not in str(err.value) and "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(err.value)


def test_a_bucket_that_fails_a_copy_loses_nothing(s3, tmp_path, caplog):
    import boto3

    source = tmp_path / "s.yaml"
    source.write_text("name: t\n")
    caplog.set_level(logging.INFO, "satune")
    run = prepare(sweep(s3), source, resume=False)
    run_dir = run.claim()
    bucket, client = s3.removeprefix("s3://"), boto3.client("s3")
    for obj in client.list_objects_v2(Bucket=bucket)["Contents"]:
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)
    run.save(status="interrupted")  # the store is gone: the local copy is written all the same
    assert json.loads((run_dir / STATE_FILE).read_text())["status"] == "interrupted"
    assert "storage: could not copy sweep.json up (FileNotFoundError" in caplog.text
    run.save(status="interrupted", n=2)  # said once while the store stays away, not at every save
    assert caplog.text.count("could not copy") == 1 and "copies reach" not in caplog.text
    client.create_bucket(Bucket=bucket)
    run.sync()  # back: the next copy catches up, and says so
    assert json.loads(stored(s3, "t", run_dir.name, STATE_FILE))["status"] == "interrupted"
    assert caplog.text.count(f"storage: copies reach {run.location} again") == 1


def test_tunes_requests_wait_out_a_short_outage_of_the_store_and_give_up_after_patience(
    s3_endpoint, tmp_path, monkeypatch
):
    import threading
    import time

    import pyarrow.fs

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries, as a user may set them: none
    url, endpoint = s3_endpoint
    store = Storage(url)
    path, arrow = store.tune_storage("t", tmp_path / "20261124-101010", patience=2)
    assert path == f"{url.removeprefix('s3://')}/t/20261124-101010"
    fs = arrow.handler.fs
    assert pickle.loads(pickle.dumps(fs)).patience == 2  # what each trial gets: Tune pickles it to them

    endpoint.stop()
    back = threading.Timer(1, endpoint.start)
    back.start()
    fs.pipe_file(f"{path}/a", b"1")  # sent once the store is back
    back.join()
    assert store.read("t", "20261124-101010", "a") == b"1"
    assert store.unreachable() is None

    endpoint.stop()
    assert store.unreachable().startswith("EndpointConnectionError: ")
    with pytest.raises(StorageError, match=rf"^storage: cannot read {url}: EndpointConnectionError: "):
        store.read("t", "20261124-101010", "a")  # satune's own requests do not wait: the sweep's watchdog does
    start = time.monotonic()
    with pytest.raises(Exception, match="Could not connect"):
        arrow.get_file_info(pyarrow.fs.FileSelector(path))
    assert 2 <= time.monotonic() - start < 10
    endpoint.start()
    store.give_up()  # the sweep stops: this process's requests through Tune's filesystem are not sent
    with pytest.raises(Exception, match="the sweep stopped waiting for the object store"):
        fs.cat_file(f"{path}/a")
    store.tune_storage("t", tmp_path / "20261124-101010", patience=2)  # the next sweep here waits again
    assert fs.cat_file(f"{path}/a") == b"1"
