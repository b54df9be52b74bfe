"""Every file in sweeps/ runs end to end before a user's GPU hour is spent on it.

Each shipped sweep runs through `satune sweep`, joined to a real Ray head and a real MLflow server, on
data written in the exact on-disk formats users download (tests/support/fabricated.py: torchvision's CIFAR
pickles under `data/`, as the recipes' `data.root: data` expects; the embedded sets as they ship). Only
sizes are overridden: epochs, the training subset, batch sizes, evaluation examples and attack steps,
the trials a search runs, and the CPU resources of this machine. Architecture (at its real width), threat
model, method and auxiliary data stay the recipe's, and the test checks that they do, in the spec and
in the parameters MLflow recorded. Chained recipes (transfer sources, then transfer) run in order on
one storage and one tracking server. New files in sweeps/ are picked up without a change here.

Ray's workers read fabricated CIFAR files because tests/support/checksum_bypass (a sitecustomize) is on the
Ray head's PYTHONPATH: torchvision's MD5 check is the one thing bypassed.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fabricated
import pytest
import yaml
from conftest import RECIPES, ROOT, ray_head, tune_dir_of
from mlflow.tracking import MlflowClient

from satune.tracking import PARENT_TAG, SWEEP_TAG, TRIAL_TAG, LocalServer

pytestmark = pytest.mark.integration

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
SMALL_ARCHS = {"small_cnn"}
# Sizes of the shrunk runs. A heavy recipe (a ResNet or a wide ResNet at its real width, at most
# 0.25 s per image and pass on one CPU thread) runs one trial on a handful of images.
EPOCHS, BATCH, EVAL_N, EVAL_STEPS, AA_N = 2, 2, 8, 2, 1
LANES = 3  # sweeps at once on the 2-CPU head: drivers mostly wait, trials queue for the CPUs
HUNG_S = 900  # a sweep still running after this long is killed and fails its test (a hang, not slowness)
SIZE_KEYS = {"warmup_epochs", "aux_batch_size"}  # method fields that are sizes, not the method


def heavy(recipe: dict) -> bool:
    return recipe["trial"].get("model", {}).get("arch", "small_cnn") not in SMALL_ARCHS


def shrink(recipe: dict, storage: Path, tracking_uri: str) -> dict:
    """The recipe with only its sizes (and this machine's resources) overridden."""
    s = copy.deepcopy(recipe)
    keep = 1 if heavy(recipe) else 2  # configurations (and seeds) of the search
    trial = s["trial"]
    train = trial.setdefault("train", {})
    train["epochs"] = min(train.get("epochs", EPOCHS), EPOCHS)
    train["batch_size"] = BATCH
    method = trial["method"]
    if "warmup_epochs" in method:
        method["warmup_epochs"] = min(method["warmup_epochs"], EPOCHS - 1)  # one warm-up epoch, one gated
    if "aux_batch_size" in method:
        method["aux_batch_size"] = BATCH
    search = s["search"]
    for axes in (search.get("grid") or {}, search.get("space") or {}):
        for i, (key, values) in enumerate(axes.items()):
            if isinstance(values, list):
                axes[key] = values[: keep if i == 0 else 1]
            elif isinstance(values, dict) and isinstance(values.get("grid"), list):
                values["grid"] = values["grid"][: keep if i == 0 else 1]
    if search.get("num_samples"):
        search["num_samples"] = min(search["num_samples"], keep)
    search["repeats"] = min(search.get("repeats", 1), keep)
    trial.setdefault("data", {})["train_size"] = _train_size(trial, search)
    ev = trial.setdefault("eval", {})
    ev.update(n=EVAL_N, pgd_steps=EVAL_STEPS)
    if ev.get("autoattack", {}).get("n", 1000) != 0:
        ev.setdefault("autoattack", {})["n"] = AA_N
    if s.get("final_eval"):
        final = s["final_eval"]
        if isinstance(final.get("top_k"), int):
            final["top_k"] = min(final["top_k"], keep)
        final.setdefault("autoattack", {})["n"] = AA_N
        final["resources"] = {"cpu": 1, "gpu": 0}
    s["resources"] = {"cpu": 1, "gpu": 0, "max_concurrent": 2}
    s["storage"] = str(storage)
    s["tracking"] = {"uri": tracking_uri, "experiment": s["name"]}
    return s


def _train_size(trial: dict, search: dict) -> int:
    """Two images, or as many as put one example into SAT's A at the smallest fraction searched, or
    one image of every class for a class split."""
    method = trial["method"]
    if method.get("kind") != "sat":
        return 2
    if method.get("split") == "class":
        return 10
    fractions = [method.get("fraction") or 1.0]
    for axes in (search.get("grid") or {}, search.get("space") or {}):
        values = axes.get("method.fraction")
        fractions += values if isinstance(values, list) else (values or {}).get("grid", [])
    return max(BATCH, 2 * math.ceil(1 / (2 * min(fractions))))


def kept_recipe(recipe: dict, shrunk: dict) -> None:
    """What the recipe is about survives the shrink unchanged."""
    a, b = recipe["trial"], shrunk["trial"]
    for part in ("model", "threat", "runtime"):
        assert a.get(part) == b.get(part), part
    assert {k: v for k, v in a["method"].items() if k not in SIZE_KEYS} == {
        k: v for k, v in b["method"].items() if k not in SIZE_KEYS
    }
    for key in ("dataset", "root", "classes", "augment", "resize"):
        assert a["data"].get(key) == b["data"].get(key), key


@dataclass
class Ran:
    file: Path
    recipe: dict
    shrunk: dict
    returncode: int | None = None
    seconds: float = 0.0
    log: Path | None = None
    after: list[str] = field(default_factory=list)  # names of sweeps that must finish first

    @property
    def name(self) -> str:
        return self.recipe["name"]

    def output(self) -> str:
        return self.log.read_text()[-6000:] if self.log else ""


def sources_of(recipe: dict) -> list[str]:
    grid = recipe["search"].get("grid") or {}
    return [v["runs_of"] for v in grid.values() if isinstance(v, dict) and "runs_of" in v]


@pytest.fixture(scope="module")
def recipes(tmp_path_factory, request) -> Iterator[dict[str, Ran]]:
    """Every sweep file that `-k` selected (and the sweeps it reads) run shrunk, LANES at a time, sources before the sweeps that read them, on a
    Ray head and an MLflow server of their own (the recipes' names would meet other tests' runs)."""
    base = tmp_path_factory.mktemp("recipes")
    selected = {
        item.callspec.params["path"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }
    with LocalServer(base / "mlflow") as server:
        yield run_all(base, server.uri, request.config, selected)


def run_all(base: Path, tracking_uri: str, config: pytest.Config, selected: set[Path]) -> dict[str, Ran]:
    fabricated.cifar10(base / "data", n_train=40, n_test=12)
    fabricated.cifar100(base / "data", n_train=200, n_test=20)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(fabricated.BYPASS), os.environ.get("PYTHONPATH")])),
    }
    runs: dict[str, Ran] = {}
    for path in SWEEPS:
        recipe = yaml.safe_load(path.read_text())
        ran = Ran(path, recipe, shrink(recipe, base / "runs", tracking_uri), after=sources_of(recipe))
        (base / path.name).write_text(yaml.safe_dump(ran.shrunk, sort_keys=False))
        runs[ran.name] = ran
    needed = {r.name for r in runs.values() if r.file in selected}
    while any(s not in needed for n in needed for s in runs[n].after if s in runs):  # a selected transfer's sources
        needed |= {s for n in needed for s in runs[n].after if s in runs}
    runs = {n: r for n, r in runs.items() if n in needed}
    # Heavy recipes first: they set the makespan.
    waiting = sorted(runs.values(), key=lambda r: (not heavy(r.recipe), r.file.name))
    with ray_head(base, env=env) as address:
        running: dict[str, tuple[subprocess.Popen, float]] = {}
        while waiting or running:
            for name, (proc, start) in list(running.items()):
                if proc.poll() is None and time.monotonic() - start > HUNG_S:
                    os.killpg(proc.pid, signal.SIGKILL)  # its returncode (-9) fails its test
                if proc.poll() is not None:
                    runs[name].returncode, runs[name].seconds = proc.returncode, time.monotonic() - start
                    del running[name]
            for ran in list(waiting):
                if len(running) >= LANES:
                    break
                if any(runs[s].returncode is None for s in ran.after if s in runs):
                    continue
                waiting.remove(ran)
                ran.log = base / f"{ran.name}.log"
                with open(ran.log, "w") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "satune.cli", "sweep", ran.file.name, "--address", address, "--plain"],
                        cwd=base,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                running[ran.name] = (proc, time.monotonic())
            time.sleep(0.5)  # polling child processes; each ends on its own
    for ran in runs.values():
        ran.file = base / ran.file.name
    config.stash[RECIPES] = [(r.file.name, r.returncode, r.seconds) for r in runs.values()]
    return runs


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_sweep_runs_end_to_end(path: Path, recipes):
    ran = next(r for r in recipes.values() if r.file.name == path.name)
    kept_recipe(ran.recipe, ran.shrunk)
    assert ran.returncode == 0, f"{path.name} exited {ran.returncode}:\n{ran.output()}"
    client = MlflowClient(ran.shrunk["tracking"]["uri"])
    exp = client.get_experiment_by_name(ran.name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if SWEEP_TAG in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert children and all(c.info.status == "FINISHED" for c in children), [c.info.status for c in children]
    (run_dir,) = (Path(ran.shrunk["storage"]) / ran.name).iterdir()
    tune_trials = {p.name for p in tune_dir_of(run_dir).iterdir() if p.is_dir()}
    assert tune_trials == {c.data.tags[TRIAL_TAG] for c in children}  # no other sweep's trials in its Tune folder
    trial = ran.recipe["trial"]
    for c in children:  # what ran is the recipe's model, threat and method, as MLflow recorded it
        params, metrics = c.data.params, c.data.metrics
        assert params["model.arch"] == trial.get("model", {}).get("arch", "small_cnn")
        assert params["method.kind"] == trial["method"]["kind"] and params["data.dataset"] == trial["data"]["dataset"]
        assert params["threat.norm"] == trial["threat"]["norm"]
        assert "eval/clean_acc" in metrics and "proxy/pgd_acc" in metrics
    if trial["method"]["kind"] == "biamat":  # a gated epoch drew the recipe's auxiliary data
        assert all("biamat/hi_ratio" in c.data.metrics for c in children)
    for source in ran.after:
        assert f"trials of {source}" in ran.output()
