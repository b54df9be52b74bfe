import os
import signal
import threading
import time
from pathlib import Path

import pytest

from satune.tracking import LocalServer, TrackingError, check_version_match
from satune.tracking import server as tracking_server


def test_mlflow_client_and_server_must_share_major_and_minor():
    check_version_match("http://h", "3.17.2", "3.17.0")
    for server in ("3.16.2", "2.17.2"):
        with pytest.raises(
            TrackingError, match=f"^version mismatch: the MLflow server at http://h runs MLflow {server}"
        ):
            check_version_match("http://h", server, "3.17.2")


_ctrl_c_in_fork = threading.Event()


def _press_ctrl_c() -> None:
    """Ctrl-C pressed while Python runs its at-fork hooks (which drop a KeyboardInterrupt raised
    in them), and time for another thread to take it."""
    if _ctrl_c_in_fork.is_set():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)


os.register_at_fork(before=_press_ctrl_c)


def test_ctrl_c_while_the_local_server_forks_is_not_lost(tmp_path):
    """Another thread takes the signal (a sweep has Ray's), and the main thread runs the handler
    inside the at-fork hooks: unless held back, the interrupt is dropped there and the sweep carries on."""
    done = threading.Event()
    bystander = threading.Thread(target=done.wait, daemon=True)
    bystander.start()
    server = LocalServer(tmp_path)
    try:
        with pytest.raises(KeyboardInterrupt):
            _ctrl_c_in_fork.set()
            try:
                server.launch()
            finally:
                _ctrl_c_in_fork.clear()
    finally:
        done.set()
        server.stop()
    assert server.proc is None and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_every_tag_name_comes_from_the_tag_table():
    """A tag written as a literal outside satune/tracking/tags.py would not follow a rename there."""
    import re

    from satune.tracking import tags

    literal = re.compile(r"""["'](satune|mlflow)\.[A-Za-z_]""")
    package = Path(tags.__file__).parents[1]
    found = [
        f"{p.relative_to(package)}:{i}: {line.strip()}"
        for p in sorted(package.rglob("*.py"))
        if p.name != "tags.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if literal.search(line) and '"mlflow.db"' not in line
    ]  # (the store's file, not a tag)
    assert not found
    names = {k: v for k, v in vars(tags).items() if k.isupper() and k != "ML_EXPERIMENT"}
    assert len(set(names.values())) == len(names), "two tag names share a key"


def test_a_local_server_whose_port_was_taken_meanwhile_moves_to_a_free_one(tmp_path):
    """Its port was free when chosen; another process (Ray starts many beside it) bound it first and
    answers with something that is not HTTP: the server exits at start and starts again elsewhere."""
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]

    def garble() -> None:  # a gRPC-like peer: bytes that are no HTTP status line
        while True:
            try:
                conn, _ = squatter.accept()
            except OSError:
                return
            conn.sendall(b"\x00\x00\x18\x04\x00\x00\x00\x00\x00garbage\r\n\r\n")
            conn.close()

    threading.Thread(target=garble, daemon=True).start()
    server = LocalServer(tmp_path, port=taken)
    try:
        with pytest.raises(TrackingError, match="not as an HTTP server"):
            tracking_server.check_reachable(f"http://127.0.0.1:{taken}")
        server.start()
        assert server.port != taken and server.running
        tracking_server.check_reachable(server.uri)
    finally:
        server.stop()
        squatter.close()


def test_a_sweeps_trial_runs_are_read_page_by_page(tmp_path, monkeypatch):
    """child_runs reads every trial run of a sweep, however many pages (a sweep may hold 100,000)."""
    from mlflow.tracking import MlflowClient

    from satune.tracking import PARENT_TAG, child_runs
    from satune.tracking import runs as tracking_runs

    with LocalServer(tmp_path) as server:
        client = MlflowClient(server.uri)
        experiment = client.create_experiment("paged")
        parent = client.create_run(experiment).info.run_id
        made = {client.create_run(experiment, tags={PARENT_TAG: parent}).info.run_id for _ in range(5)}
        client.create_run(experiment, tags={PARENT_TAG: "another sweep"})
        monkeypatch.setattr(tracking_runs, "PAGE", 2)
        assert {r.run_id for r in child_runs(server.uri, experiment, parent)} == made
