"""A user watching the Ray dashboard sees which trial, and which configuration, each trial actor
runs (a `SatuneTrial` whose repr names them, never Tune's anonymous `ImplicitFunc`), and each trial's
progress as Ray metrics on its node's metrics endpoint, the one Prometheus scrapes, with the values
MLflow logged; and the Grafana dashboard's queries, run by a real Prometheus that scrapes that endpoint,
plot every trial up to its last epoch. Real Ray (a head of this module's own, token auth on), one real
sweep that both tests watch, a real Prometheus (Debian's binary), real HTTP."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from conftest import RAY, ROOT, screenshot, smoke_file, start_satune, wait_until
from mlflow.tracking import MlflowClient

from satune.tracking import PARENT_TAG, TRIAL_TAG, free_port
from satune.tune import metrics

pytestmark = pytest.mark.integration

EPOCHS = 10  # a few seconds in which both trials train at once (their epochs are fast)
SWEEP = "watched"
BOARD = ROOT / "docker" / "grafana" / "dashboards" / "satune_trials.json"
# What Grafana puts for its interval macros, and the step of its range queries: the dashboard's
# default view (the last hour, one point every few pixels) asks for about one point every 5 s.
STEP = "5s"
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
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "SATUNE_CACHE": str(tmp_path_factory.getbasetemp() / "satune-cache"),
    }
    proc = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard_port),
            "--metrics-export-port",
            str(metrics_port),
            "--disable-usage-stats",
            "--system-config",
            json.dumps({"metrics_report_interval_ms": 1000}),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    head = Head(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", f"http://127.0.0.1:{metrics_port}/metrics")
    try:
        wait_until(
            "the dashboard and the metrics agent",
            lambda: _answers(head.dashboard) and _answers(head.metrics),
            timeout=90,
        )
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


class Poller:
    """Calls `poll()` every `every` seconds in a thread of its own until `stop()`."""

    def __init__(self, every: float):
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.poll()

    def poll(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Watch(Poller):
    """Scrapes a sweep's series every 0.25 s (a series leaves the endpoint two flush intervals after
    its actor exits, and the browser holds the test's thread meanwhile): every value each series
    showed, in order, and the last one with its tags."""

    def __init__(self, url: str, sweep: str):
        self.url, self.sweep = url, sweep
        self.seen: dict[tuple[str, str], list[float]] = {}
        self.last: dict[tuple[str, str], tuple[dict[str, str], float]] = {}
        super().__init__(0.25)

    def poll(self) -> None:
        now = scrape(self.url, self.sweep)
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


@dataclass
class Prometheus:
    url: str

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: object) -> Any:
        """GET /api/v1/<path>: its data; what Prometheus refuses (a query it cannot parse) fails the test."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as e:  # a refused query: 400 or 422, with Prometheus' reason
            text = e.read().decode()
        try:
            body = json.loads(text)
        except ValueError:
            body = {"status": "error", "error": text}
        assert body.get("status") == "success", f"Prometheus refused {params}: {body.get('error')}"
        return body["data"]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, head):
    """Debian's Prometheus on a free port of 127.0.0.1, scraping the head's metrics agent every second
    (as docker/prometheus/prometheus.yml scrapes every node's, every 10 s), its data in a temp dir.
    `make test` installs the package; its system service is never used."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("no prometheus on PATH: `make test` installs Debian's prometheus package")
    tmp = tmp_path_factory.mktemp("prometheus")
    config, log = tmp / "prometheus.yml", tmp / "prometheus.log"
    target = urllib.parse.urlsplit(head.metrics).netloc
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}")

    def scraping() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited ({proc.returncode}):\n{log.read_text()}")
        return prom.ready() and [s["value"][1] for s in prom.api("query", query='up{job="ray"}')["result"]] == ["1"]

    try:
        wait_until("Prometheus scraping the head's metrics agent", scraping, timeout=60)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# --- the dashboard's queries, as Grafana sends them ---------------------------------------------------


@dataclass(frozen=True)
class Target:
    panel: str
    expr: str
    legend: str


def board() -> dict:
    return json.loads(BOARD.read_text())


def targets() -> list[Target]:
    return [
        Target(p["title"], t["expr"], t.get("legendFormat", ""))
        for p in board()["panels"]
        for t in p.get("targets", [])
    ]


def sweep_variable() -> dict:
    (variable,) = [v for v in board()["templating"]["list"] if v["name"] == "sweep"]
    return variable


def sweep_choices() -> list[str]:
    """What Grafana puts for `$sweep`: the one sweep picked, or All (the variable's allValue, its default)."""
    variable = sweep_variable()
    return [SWEEP, *([variable["allValue"]] if variable.get("includeAll") else [])]


def as_sent(expr: str, sweep: str) -> str:
    out = re.sub(r"\$\{sweep(?::\w+)?\}|\$sweep\b", sweep, expr)
    out = re.sub(r"\$\{?__(?:rate_interval|interval|range)\}?", STEP, out)
    assert "$" not in out, f"{expr}: a Grafana variable or macro this test does not fill in"
    return out


def sent_queries() -> list[str]:
    return [as_sent(t.expr, choice) for t in targets() for choice in sweep_choices()]


class Plotted(Poller):
    """Every query of the dashboard, each way Grafana fills `$sweep`, as an instant query every
    second: the trials of the sweep each one returned, and what Prometheus refused."""

    def __init__(self, prom: Prometheus, queries: list[str]):
        self.prom = prom
        self.trials: dict[str, set[str | None]] = {q: set() for q in queries}
        self.errors: list[str] = []
        super().__init__(1.0)

    def poll(self) -> None:
        for query in self.trials:
            try:
                result = self.prom.api("query", query=query)["result"]
            except (AssertionError, OSError) as e:
                with self._lock:
                    self.errors.append(f"{query}: {e}")
                continue
            with self._lock:
                self.trials[query] |= {s["metric"].get("trial") for s in result if s["metric"].get("sweep") == SWEEP}


# --- the module's one sweep ----------------------------------------------------------------------------


@dataclass
class Run:
    proc: subprocess.Popen
    watch: Watch
    plotted: Plotted
    started: float
    ended: float | None = None
    output: str = field(default="", repr=False)

    def finish(self) -> None:
        """Waits for the sweep (the first caller) and stops watching it; satune must have succeeded."""
        if self.ended is None:
            try:
                self.output, _ = self.proc.communicate(timeout=180)
            finally:
                self.ended = time.time()
                self.watch.stop()
                self.plotted.stop()
        assert self.proc.returncode == 0, self.output


@pytest.fixture(scope="module")
def watched(tmp_path_factory, head, prometheus, mlflow_server):
    """One sweep of two trials on the head, both tests watching it: its node's metrics endpoint
    scraped by the test (Watch) and by Prometheus, the dashboard's queries run while it trains."""
    sweep = smoke_file(tmp_path_factory.mktemp(SWEEP), SWEEP, mlflow_server, **{"trial.train.epochs": EPOCHS})
    queries = sent_queries()
    started = time.time()
    proc = start_satune("sweep", sweep, "--address", head.address, "--no-report")
    run = Run(proc, Watch(head.metrics, SWEEP), Plotted(prometheus, queries), started)
    try:
        yield run
    finally:
        run.watch.stop()
        run.plotted.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def trial_runs(uri: str) -> tuple[MlflowClient, list]:
    """The sweep's trial runs in MLflow (children of its parent run)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(SWEEP)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if PARENT_TAG in r.data.tags]
    assert len(runs) == 2
    return client, runs


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_trial_actors_name_their_trial_and_export_its_progress(watched, head, mlflow_server, ray_token, page):
    # Both trials mid-training (their actors alive): the Actors page lists them by their repr.
    wait_until("both trials training", lambda: len(watched.watch.training()) == 2, watched.proc, timeout=180)
    _actors_page(page, head, ray_token.read_text().strip(), SWEEP)
    watched.finish()
    seen, last = watched.watch.seen, watched.watch.last
    epoch, proxy = metrics.exported(metrics.EPOCH), metrics.exported(metrics.PROXY)

    client, runs = trial_runs(mlflow_server)
    for run in runs:
        trial, config = run.data.tags[TRIAL_TAG], run.data.tags["satune.config"]

        def logged(key: str, run_id: str = run.info.run_id) -> dict[int, float]:
            return history(client, run_id, key)

        # Tagged with the sweep, the trial and its configuration (MLflow's satune.config).
        for name in metrics.GAUGES:
            tags, _ = last[metrics.exported(name), trial]
            assert (tags["sweep"], tags["trial"], tags["config"]) == (SWEEP, trial, config), name
        assert last[proxy, trial][0]["metric"] == "select/pgd_acc"
        assert last[metrics.exported(metrics.EPOCHS), trial][1] == EPOCHS
        # The epochs counted up, each one an epoch MLflow has; the last values are the last epoch's.
        epochs = logged("epoch")
        assert sorted(epochs) == list(range(EPOCHS))
        assert seen[epoch, trial] == sorted(seen[epoch, trial]) and set(seen[epoch, trial]) <= set(epochs.values())
        assert last[epoch, trial][1] == EPOCHS - 1
        assert last[proxy, trial][1] == pytest.approx(logged("select/pgd_acc")[EPOCHS - 1], rel=1e-6)
        assert last[metrics.exported(metrics.TRAIN_LOSS), trial][1] == pytest.approx(
            logged("train/loss")[EPOCHS - 1], rel=1e-6
        )
        proxies = [pytest.approx(v, rel=1e-6) for v in logged("select/pgd_acc").values()]
        assert all(v in proxies for v in seen[proxy, trial])

    # The state API (what the Actors page shows): one SatuneTrial per trial, its repr naming the
    # sweep, the trial and the sampled value MLflow recorded; no anonymous ImplicitFunc.
    listed = subprocess.run(
        [sys.executable, "-c", LIST_ACTORS, head.address],
        capture_output=True,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    actors = json.loads(listed.stdout)
    assert not [a for a in actors["all"] if "ImplicitFunc" in a["class_name"]]
    trials = actors["trials"]  # (the filter docs/cluster.md shows)
    by_repr = sorted([a for a in actors["all"] if a["class_name"] == "SatuneTrial"], key=lambda a: a["repr_name"])
    assert len(trials) == 2 and sorted(trials, key=lambda a: a["repr_name"]) == by_repr, actors
    for run in runs:
        (actor,) = [a for a in trials if a["repr_name"].startswith(f"{SWEEP} trial {run.data.tags[TRIAL_TAG]}: ")]
        # (a reused actor's repr keeps its first trial's and says so: resources.reuse_actors, on by default)
        pair, _, note = actor["repr_name"].split(": ", 1)[1].partition(" ")
        assert note in ("", "(the first of this actor's trials, resources.reuse_actors)"), actor
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


def test_the_grafana_dashboard_plots_every_trial_from_a_real_prometheus(watched, prometheus, mlflow_server):
    """Every query of docker/grafana's dashboard as Grafana sends it (`$sweep` the sweep or All, its
    interval macros 5 s), run by Prometheus: while the sweep trains, each one returns every trial;
    over the sweep's window, one series per trial, named by the legend's labels, whose last value
    (the legends' lastNotNull, the bars' value) is what MLflow logged last. The Sweep selector's
    query lists the sweep."""
    watched.finish()
    assert watched.ended is not None
    step = int(STEP.removesuffix("s"))
    client, runs = trial_runs(mlflow_server)
    trials = {run.data.tags[TRIAL_TAG]: run for run in runs}
    # The event the panels' last values need: every trial's last epoch scraped (Ray flushes the
    # gauges on its own clock, later on a loaded machine); then a scrape a step later, which a
    # dashboard refreshed then plots (Grafana aligns a range's ends down to its step).
    last_epoch = {trial: max(history(client, run.info.run_id, "epoch").values()) for trial, run in trials.items()}

    def last_epochs_scraped() -> bool:
        query = f'{metrics.exported(metrics.EPOCH)}{{sweep="{SWEEP}"}}'
        scraped = {
            s["metric"].get("trial"): float(s["value"][1]) for s in prometheus.api("query", query=query)["result"]
        }
        return scraped == last_epoch

    wait_until("every trial's last epoch scraped by Prometheus", last_epochs_scraped, timeout=120)
    seen = time.time()

    def scraped_since() -> bool:
        (up,) = prometheus.api("query", query='timestamp(up{job="ray"})')["result"]
        return float(up["value"][1]) > seen + step

    wait_until("a scrape a step after the last epoch's", scraped_since, timeout=60)

    # While it trained: every query answered, for both trials.
    assert not watched.plotted.errors, watched.plotted.errors[:5]
    for query, seen in watched.plotted.trials.items():
        assert seen == set(trials), f"{query}: returned trials {seen} while the sweep trained, not {set(trials)}"

    def last_logged(run, key: str) -> float:
        logged = history(client, run.info.run_id, key)
        return logged[max(logged)]

    # What each panel's last value must be, by panel: a panel this test does not know fails it.
    expected = {
        "Epoch per trial": lambda run, labels: last_logged(run, "epoch"),
        "Proxy metric per trial": lambda run, labels: last_logged(run, labels["metric"]),
        "Training loss per trial": lambda run, labels: last_logged(run, "train/loss"),
        "Progress per trial": lambda run, labels: 1.0,
    }
    start, end = (t // step * step for t in (watched.started - step, time.time()))
    for target in targets():
        assert target.panel in expected, f"a panel this test does not check: {target.panel}"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.legend))
        for choice in sweep_choices():
            query = as_sent(target.expr, choice)
            result = prometheus.api("query_range", query=query, start=start, end=end, step=STEP)["result"]
            series = [s for s in result if s["metric"].get("sweep") == SWEEP]
            assert sorted(s["metric"].get("trial") for s in series) == sorted(trials), f"{query}: {result}"
            for s in series:
                labels, values = s["metric"], [float(v) for _, v in s["values"]]
                run = trials[labels["trial"]]
                assert legend <= set(labels), f"{query}: no {legend - set(labels)} for the legend {target.legend}"
                assert labels["config"] == run.data.tags["satune.config"], query
                assert values[-1] == pytest.approx(expected[target.panel](run, labels), rel=1e-6), (query, values)
                if target.panel == "Epoch per trial":  # counting up, through epochs MLflow has
                    epochs = set(history(client, run.info.run_id, "epoch").values())
                    assert values == sorted(values) and set(values) <= epochs, (query, values)

    # The Sweep selector: label_values(metric, label), as Grafana asks Prometheus for it.
    variable = sweep_variable()
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
    assert m is not None and variable["definition"] == variable["query"]["query"], variable
    listed = prometheus.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1), "start": start, "end": end})
    assert SWEEP in listed, listed
