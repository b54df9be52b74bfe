"""A user watching the Ray dashboard sees which trial, and which configuration, each trial actor
runs (a `SatuneTrial` whose repr names them, never Tune's anonymous `ImplicitFunc`), and each trial's
progress as Ray metrics on its node's metrics endpoint, the one Prometheus scrapes, with the values
MLflow logged. Real Ray (a head of this module's own, token auth on), a real sweep, real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass

import pytest
from conftest import RAY, screenshot, smoke_file, start_satune, wait_until
from mlflow.tracking import MlflowClient

from satune.tracking import PARENT_TAG, TRIAL_TAG, free_port
from satune.tune import metrics

pytestmark = pytest.mark.integration

EPOCHS = 5
SERIES = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# ray.util.state as a user runs it against a cluster with token auth: in a process of its own,
# with RAY_AUTH_MODE=token (this test process leaves Ray's auth settings alone).
LIST_ACTORS = """
import json, sys
from ray.util.state import list_actors
def listed(**kw):
    return [{"class_name": a.class_name, "repr_name": a.repr_name, "state": a.state}
            for a in list_actors(address=sys.argv[1], detail=True, limit=1000, **kw)]
print(json.dumps({"all": listed(), "trials": listed(filters=[("class_name", "=", "SatuneTrial")])}))
"""


@dataclass
class Head:
    address: str
    dashboard: str
    metrics: str


@pytest.fixture(scope="module")
def head(tmp_path_factory, ray_token):
    """`ray start --head` with the dashboard (the state API and the Actors page need it) and the
    metrics agent on known ports; metrics flush every second (Ray's floor) instead of every 10 s."""
    port, dashboard_port, metrics_port = free_port(), free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "SATUNE_CACHE": str(tmp_path_factory.getbasetemp() / "satune-cache")}  # fmt: skip
    proc = subprocess.Popen([str(RAY), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
                             "--metrics-export-port", str(metrics_port), "--disable-usage-stats",
                             "--system-config", json.dumps({"metrics_report_interval_ms": 1000})],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    head = Head(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", f"http://127.0.0.1:{metrics_port}/metrics")
    try:
        wait_until("the dashboard and the metrics agent", lambda: _answers(head.dashboard) and _answers(head.metrics),
                   timeout=90)  # fmt: skip
        yield head
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except urllib.error.HTTPError:  # the dashboard answers 401 without the token: it is up
        return True
    except OSError:
        return False


def scrape(url: str, sweep: str) -> dict[tuple[str, str], tuple[dict[str, str], float]]:
    """satune's series of one sweep on a node's metrics endpoint: (name, trial) -> (tags, value)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        m = SERIES.match(line)
        if m is None or not m.group(1).startswith(metrics.exported("satune_")):
            continue
        tags = dict(LABEL.findall(m.group(2)))
        if tags.get("sweep") == sweep:
            found[m.group(1), tags["trial"]] = (tags, float(m.group(3)))
    return found


class Watch:
    """Scrapes a sweep's series every 0.25 s in a thread of its own (a series leaves the endpoint
    two flush intervals after its actor exits, and the browser holds the test's thread meanwhile):
    every value each series showed, in order, and the last one with its tags."""

    def __init__(self, url: str, sweep: str):
        self.seen: dict[tuple[str, str], list[float]] = {}
        self.last: dict[tuple[str, str], tuple[dict[str, str], float]] = {}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, sweep), daemon=True)
        self._thread.start()

    def _run(self, url: str, sweep: str) -> None:
        while not self._stop.wait(0.25):
            now = scrape(url, sweep)
            with self._lock:
                self.last |= now
                for key, (_, value) in now.items():
                    if not self.seen.get(key) or self.seen[key][-1] != value:
                        self.seen.setdefault(key, []).append(value)

    def training(self) -> set[str]:
        """The trials whose last epoch is still ahead."""
        epoch = metrics.exported(metrics.EPOCH)
        with self._lock:
            return {trial for (name, trial), (_, value) in self.last.items() if name == epoch and value < EPOCHS - 1}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_trial_actors_name_their_trial_and_export_its_progress(tmp_path, head, mlflow_server, ray_token, page):
    sweep = smoke_file(tmp_path, "watched", mlflow_server, **{"trial.train.epochs": EPOCHS})
    proc = start_satune("sweep", sweep, "--address", head.address, "--no-report")
    watch = Watch(head.metrics, "watched")
    try:
        # Both trials mid-training (their actors alive): the Actors page lists them by their repr.
        wait_until("both trials training", lambda: len(watch.training()) == 2, proc, timeout=180)
        _actors_page(page, head, ray_token.read_text().strip(), "watched")
        output, _ = proc.communicate(timeout=180)
    finally:
        watch.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output
    seen, last = watch.seen, watch.last
    epoch, proxy = metrics.exported(metrics.EPOCH), metrics.exported(metrics.PROXY)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("watched")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if PARENT_TAG in r.data.tags]
    assert len(runs) == 2
    for run in runs:
        trial, config = run.data.tags[TRIAL_TAG], run.data.tags["satune.config"]

        def logged(key: str, run_id: str = run.info.run_id) -> dict[int, float]:
            return {m.step: m.value for m in client.get_metric_history(run_id, key)}

        # Tagged with the sweep, the trial and its configuration (MLflow's satune.config).
        for name in metrics.GAUGES:
            tags, _ = last[metrics.exported(name), trial]
            assert (tags["sweep"], tags["trial"], tags["config"]) == ("watched", trial, config), name
        assert last[proxy, trial][0]["metric"] == "select/pgd_acc"
        assert last[metrics.exported(metrics.EPOCHS), trial][1] == EPOCHS
        # The epochs counted up, each one an epoch MLflow has; the last values are the last epoch's.
        epochs = logged("epoch")
        assert sorted(epochs) == list(range(EPOCHS))
        assert seen[epoch, trial] == sorted(seen[epoch, trial]) and set(seen[epoch, trial]) <= set(epochs.values())
        assert last[epoch, trial][1] == EPOCHS - 1
        assert last[proxy, trial][1] == pytest.approx(logged("select/pgd_acc")[EPOCHS - 1], rel=1e-6)
        assert last[metrics.exported(metrics.TRAIN_LOSS), trial][1] == pytest.approx(
            logged("train/loss")[EPOCHS - 1], rel=1e-6)  # fmt: skip
        proxies = [pytest.approx(v, rel=1e-6) for v in logged("select/pgd_acc").values()]
        assert all(v in proxies for v in seen[proxy, trial])

    # The state API (what the Actors page shows): one SatuneTrial per trial, its repr naming the
    # sweep, the trial and the sampled value MLflow recorded; no anonymous ImplicitFunc.
    listed = subprocess.run([sys.executable, "-c", LIST_ACTORS, head.address], capture_output=True, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "token"}, timeout=60)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    actors = json.loads(listed.stdout)
    assert not [a for a in actors["all"] if "ImplicitFunc" in a["class_name"]]
    trials = actors["trials"]  # (the filter docs/cluster.md shows)
    by_repr = sorted([a for a in actors["all"] if a["class_name"] == "SatuneTrial"], key=lambda a: a["repr_name"])
    assert len(trials) == 2 and sorted(trials, key=lambda a: a["repr_name"]) == by_repr, actors
    for run in runs:
        (actor,) = [a for a in trials if a["repr_name"].startswith(f"watched trial {run.data.tags[TRIAL_TAG]}: ")]
        (pair,) = actor["repr_name"].split(": ")[1:]
        key, value = pair.split("=")
        assert key == "method.w_A" and float(value) == pytest.approx(float(run.data.params["method.w_A"]), rel=1e-3)


def _actors_page(page, head: Head, token: str, sweep: str) -> None:
    """The dashboard's Actors page, signed in as the dashboard's own login does (it trades the token
    for this cookie): both trials' actors are listed by their repr. Kept in test-artifacts/."""
    page.context.add_cookies([{"name": "ray-authentication-token", "value": token, "url": head.dashboard}])
    page.goto(f"{head.dashboard}/#/actors")
    rows = page.get_by_text(re.compile(rf"^{sweep} trial \w+: method\.w_A="))
    wait_until("both trials on the Actors page", lambda: rows.count() == 2, timeout=30)
    assert page.get_by_text("SatuneTrial").count() >= 2
    screenshot(page, "ray-dashboard-actors")
