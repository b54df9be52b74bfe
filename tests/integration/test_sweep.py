import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import (
    kill_session,
    run_dir_of,
    satune,
    smoke_file,
    start_satune,
    state_of,
    tune_dir_of,
    wait_until,
)
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from satune.tracking import PARENT_TAG, SWEEP_TAG, TRIAL_TAG, LocalServer, free_port

pytestmark = pytest.mark.integration


def runs_of(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if SWEEP_TAG in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    return client, parents, children


def study_of(run_dir, name: str):
    storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def processes() -> list[tuple[int, list[str]]]:
    """(pid, argv) of this machine's processes, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1] if entry.name.isdigit() else []
        except OSError:  # it ended meanwhile
            continue
        if argv:
            found.append((int(entry.name), [a.decode(errors="replace") for a in argv]))
    return found


def emptied(trial_dir: Path) -> bool:
    """Tune's checkpoints of a trial hold only the trainable's meta.json (tune.pruning)."""
    held = {p.name for p in trial_dir.glob("checkpoint_*/*")}
    return held == {"meta.json"}


def epochs_logged(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))


def timeless(result: dict) -> dict:
    """A result file without wall-clock times (the only values two runs may not share)."""

    def drop(d):
        return {k: v for k, v in d.items() if not k.startswith("time/")}

    return {**result, "metrics": drop(result["metrics"]), "history": [drop(h) for h in result["history"]]}


def test_smoke_sweep_end_to_end(tmp_path, mlflow_server, ray_address):
    """On a cluster joined with --address: the SAT ranking warm-up and AutoAttack run under Ray,
    and the printed line reproduces the printed best trial's whole result."""
    sweep = smoke_file(
        tmp_path,
        "e2e",
        mlflow_server,
        **{
            "trial.method.ranking": "entropy_hardest",
            "trial.method.ranking_epochs": 1,
            "trial.eval.autoattack": {"version": "custom", "attacks": ["apgd-ce"], "n": 30},
        },
    )
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SAT ranking: one clean fit" in done.stderr

    client, parents, children = runs_of(mlflow_server, "e2e")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2  # num_samples
    assert all(c.data.tags[PARENT_TAG] == parents[0].info.run_id for c in children)
    for c in children:
        assert c.info.status == "FINISHED"
        assert "method.w_A" in c.data.params and {"eval/pgd_acc", "eval/aa_acc"} <= set(c.data.metrics)
        assert epochs_logged(client, c) == [0, 1]  # one point per epoch
        assert {a.path for a in client.list_artifacts(c.info.run_id)} >= {"result.json", "model"}

    # Optuna's journal holds the same trials, with the same values
    study = study_of(run_dir_of(tmp_path, "e2e"), "e2e")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(study.trials) == len(complete) == 2
    by_param = {round(float(c.data.params["method.w_A"]), 9): c.data.metrics["proxy/pgd_acc"] for c in children}
    assert {round(t.params["method.w_A"], 9): t.values[0] for t in complete} == pytest.approx(by_param)

    # the printed command reproduces the printed best trial without Ray or MLflow, to the last digit
    best_id = re.search(r"best trial (\w+) ", done.stdout).group(1)
    (best,) = [c for c in children if c.data.tags[TRIAL_TAG] == best_id]
    assert parents[0].data.tags["satune.best_trial"] == best_id
    line = next(ln for ln in done.stdout.splitlines() if ln.strip().startswith("satune run"))
    sets = dict(arg.split("=", 1) for arg in shlex.split(line)[4::2])
    assert {k: yaml.safe_load(v) for k, v in sets.items()} == {k: yaml.safe_load(best.data.params[k]) for k in sets}
    out = tmp_path / "repro"
    rerun = satune(*shlex.split(line)[1:], "--out", out, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    logged = json.loads(open(client.download_artifacts(best.info.run_id, "result.json", str(tmp_path))).read())
    assert timeless(json.loads((out / "result.json").read_text())) == timeless(logged)


def test_reused_actors_run_trial_after_trial_as_if_each_were_alone(tmp_path, mlflow_server, ray_address):
    """resources.reuse_actors: two actors run four trials; each trial still has one MLflow run with
    every epoch once, Optuna the same values, and a trial that ran second on an actor reproduces
    bit for bit under `satune run` (nothing leaks from the trial before it)."""
    sweep = smoke_file(tmp_path, "reused", mlflow_server, **{"search.num_samples": 4, "resources.reuse_actors": True})
    done = satune("sweep", sweep, "--address", ray_address, "--no-report", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    client, parents, children = runs_of(mlflow_server, "reused")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert all(epochs_logged(client, c) == [0, 1] for c in children)
    by_actor: dict[str, list] = {}
    for c in sorted(children, key=lambda c: c.info.start_time):
        by_actor.setdefault(c.data.tags["satune.actor"], []).append(c)
    assert len(by_actor) <= 2  # max_concurrent actors, not one per trial
    run_dir = run_dir_of(tmp_path, "reused")
    study = study_of(run_dir, "reused")
    assert sorted(t.values[0] for t in study.trials) == sorted(c.data.metrics["proxy/pgd_acc"] for c in children)
    # Tune was told what it reads of a final report; the sweep's rows hold all of it, from MLflow
    (state,) = tune_dir_of(run_dir).glob("experiment_state-*.json")
    told = [json.loads(runtime)["last_result"] for _, runtime in json.loads(state.read_text())["trial_data"]]
    assert all("proxy/pgd_acc" in r and not any("/class_" in k for k in r) for r in told)
    with (run_dir / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    by_trial = {c.data.tags[TRIAL_TAG]: c.data.metrics for c in children}
    assert len(rows) == 4 and all(
        float(r["eval/class_pgd_acc/0"]) == by_trial[r["trial_id"]]["eval/class_pgd_acc/0"] for r in rows
    )
    # and the finished trials' checkpoints are emptied (their weights are in MLflow)
    assert all(emptied(folder) for folder in tune_dir_of(run_dir).iterdir() if folder.is_dir())

    (second, *_), *_ = [runs[1:] for runs in by_actor.values() if len(runs) > 1]
    sets = [a for k in ("method.w_A", "seed", "runtime.threads") for a in ("--set", f"{k}={second.data.params[k]}")]
    rerun = satune("run", sweep, *sets, "--out", tmp_path / "repro", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    logged = json.loads(open(client.download_artifacts(second.info.run_id, "result.json", str(tmp_path))).read())
    assert timeless(json.loads((tmp_path / "repro" / "result.json").read_text())) == timeless(logged)


def test_mlflow_params_show_the_values_a_trial_ran_with(tmp_path, mlflow_server, ray_address):
    """Defaults a trial resolves are logged as numbers, never as "None": a balanced SAT trial's w_A,
    a BiaMAT trial's pi and alpha, the PGD step sizes."""
    sat = {"kind": "sat", "fraction": 0.3, "ranking": "random", "weighting": "balanced"}
    biamat = {"kind": "biamat", "aux": "noise", "warmup_epochs": 0}
    sweep = smoke_file(
        tmp_path,
        "effective",
        mlflow_server,
        **{
            "search": {"algorithm": "grid", "num_samples": 1, "space": {"method": {"grid": [sat, biamat]}}},
            "trial.train.epochs": 1,
        },
    )
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    _, _, children = runs_of(mlflow_server, "effective")
    params = {c.data.params["method.kind"]: c.data.params for c in children}
    assert set(params) == {"sat", "biamat"}
    assert all("None" not in p.values() for p in params.values())
    a = int(params["sat"]["method.a_examples"]) / int(params["sat"]["data.train_examples"])
    assert float(params["sat"]["method.w_A"]) == pytest.approx((1 - a) / a) and params["sat"]["method.w_B"] == "1.0"
    assert params["sat"]["method.weighting"] == "balanced"
    assert float(params["biamat"]["method.pi"]) == 0.55 and float(params["biamat"]["method.alpha"]) == 1.0
    for p in params.values():  # smoke.yaml: eps 0.1, 3 steps of 0.1/4 in training, PGD-5 of 2.5*0.1/5 to evaluate
        assert float(p["threat.step_size"]) == 0.025 and float(p["eval.pgd_step_size"]) == pytest.approx(0.05)
        assert p["seed"].isdigit() and p["runtime.threads"] == "1"


def test_a_failing_trial_resumes_from_its_checkpoint_in_the_same_run(tmp_path, mlflow_server, ray_address):
    sweep = smoke_file(tmp_path, "retry", mlflow_server, **{"trial.train.epochs": 3})
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path, env={"SATUNE_FAIL_AT_EPOCH": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    client, parents, children = runs_of(mlflow_server, "retry")
    assert len(children) == 2  # never two runs for one trial
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["satune.resumed_after_epoch"] == "1"  # retried from epoch 1's checkpoint
        assert epochs_logged(client, c) == [0, 1, 2]  # epochs 0 and 1 once, then 2 after the retry
    trials = study_of(run_dir_of(tmp_path, "retry"), "retry").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def test_a_trial_that_fails_for_good(tmp_path, mlflow_server, ray_address):
    sweep = smoke_file(tmp_path, "doomed", mlflow_server, **{"search.num_samples": 1, "max_failures": 0})
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path, env={"SATUNE_FAIL_AT_EPOCH": "0"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed for good" in done.stderr
    _, parents, children = runs_of(mlflow_server, "doomed")
    assert [c.info.status for c in children] == ["FAILED"]
    assert parents[0].data.tags["satune.errors"] == "1"
    (kept,) = tune_dir_of(run_dir_of(tmp_path, "doomed")).glob("*/checkpoint_*/state.pt")  # for --resume to retry
    assert [t.state for t in study_of(run_dir_of(tmp_path, "doomed"), "doomed").trials] == [TrialState.FAIL]


def test_asha_in_a_multi_objective_search(tmp_path, mlflow_server, ray_address):
    """QMC over the learning rate, ASHA on a per-epoch metric that depends on it alone (so that
    which trials stop is decided by the sampler's seed, not by noise): stopped trials are PRUNED in
    Optuna, and the Pareto front of the finished ones is printed and logged."""
    sweep = smoke_file(
        tmp_path,
        "asha",
        mlflow_server,
        **{
            "search": {
                "algorithm": "qmc",
                "metric": ["proxy/clean_acc", "proxy/pgd_acc"],
                "mode": ["max", "max"],
                "num_samples": 4,
                "space": {"train.lr": {"loguniform": [0.01, 0.1]}},
            },
            "scheduler": {"kind": "asha", "metric": "train/lr", "mode": "max", "grace_period": 1},
            "resources": {"cpu": 1, "max_concurrent": 1},
        },
    )
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    client, parents, children = runs_of(mlflow_server, "asha")
    stopped = {c.data.tags[TRIAL_TAG] for c in children if c.data.tags.get("satune.stopped_early") == "true"}
    finished = {c.data.tags[TRIAL_TAG] for c in children} - stopped
    assert len(children) == 4 and stopped and len(finished) >= 2
    assert all(c.info.status == "FINISHED" for c in children)
    states = [t.state for t in study_of(run_dir_of(tmp_path, "asha"), "asha").trials]
    assert sorted(states, key=str) == sorted(
        [TrialState.PRUNED] * len(stopped) + [TrialState.COMPLETE] * len(finished), key=str
    )
    front = parents[0].data.tags["satune.pareto_trials"].split(",")
    assert front and set(front) <= finished
    assert f"Pareto front (proxy/clean_acc, proxy/pgd_acc): {', '.join(front)}" in done.stdout
    pareto = json.loads(open(client.download_artifacts(parents[0].info.run_id, "pareto.json", str(tmp_path))).read())
    assert [p["trial_id"] for p in pareto] == front


def test_grid_sweep_in_local_mode_then_satune_ui(tmp_path, ray_address):
    sweep = smoke_file(
        tmp_path,
        "grid",
        None,
        **{
            "search": {"algorithm": "grid", "num_samples": 1, "space": {"method.w_A": {"grid": [1.0, 2.0]}}},
            "trial.train.epochs": 1,
        },
    )
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "satune.cli", "ui", str(sweep), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert ui.stdout.readline().strip() == f"MLflow UI: http://127.0.0.1:{port}  (Ctrl-C stops it)"
        uri = f"http://127.0.0.1:{port}"
        wait_until("the MLflow UI", lambda: _answers(uri), ui, timeout=120)
        _, parents, children = runs_of(uri, "grid")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert sorted(float(c.data.params["method.w_A"]) for c in children) == [1.0, 2.0]
    finally:
        kill_session(ui)


def _answers(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(uri + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_final_stage_evaluates_the_winners_and_resumes_after_a_kill(tmp_path, mlflow_server, ray_address):
    """AutoAttack on the top 2 of 3 trials over the whole final slice, each logged into its own run
    with n and an interval; the driver is killed (SIGKILL) once the first evaluation is in, and
    --resume finishes the stage without repeating it. Then `satune eval` evaluates the third."""
    name = "final"
    sweep = smoke_file(
        tmp_path,
        name,
        mlflow_server,
        **{
            "search.num_samples": 3,
            "trial.train.epochs": 1,
            "final_eval": {
                "top_k": 2,
                "autoattack": {"version": "custom", "attacks": ["apgd-ce"], "n": "all"},
                "resources": {"cpu": 1},
            },
        },
    )
    killed = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path, env={"SATUNE_KILL_IN_FINAL_STAGE": "1"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    client, _, children = runs_of(mlflow_server, name)
    assert 1 <= sum("final/aa_acc" in c.data.metrics for c in children) <= 2

    done = satune("sweep", sweep, "--resume", "--address", ray_address, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"for 2 trials \(\w+, \w+\); [12] done before", done.stderr)
    client, parents, children = runs_of(mlflow_server, name)
    proxy = {c.info.run_id: c.data.metrics["proxy/pgd_acc"] for c in children}
    winners = [c for c in children if "final/aa_acc" in c.data.metrics]
    rest = [c for c in children if "final/aa_acc" not in c.data.metrics]
    assert len(winners) == 2 and len(rest) == 1  # only the winners
    # The select slice chose them (a tie on its 162 images may go either way).
    assert min(proxy[c.info.run_id] for c in winners) >= max(proxy[c.info.run_id] for c in rest)
    for c in winners:
        m = c.data.metrics
        assert m["final/aa_n"] == m["final/clean_n"] == m["eval/clean_n"]  # the whole final slice
        assert (
            m["final/aa_acc_lo"] <= m["final/aa_acc"] <= m["final/aa_acc_hi"]
            and m["final/aa_acc"] <= m["final/clean_acc"]
        )
        assert m["final/pgd_gap"] == pytest.approx(m["eval/pgd_acc"] - m["final/aa_acc"])
        assert [p.step for p in client.get_metric_history(c.info.run_id, "final/aa_acc")] == [0]  # evaluated once
        assert c.data.tags["satune.final.autoattack"] == "custom (apgd-ce)" and c.data.tags["satune.integrity"] == "ok"
        assert {a.path for a in client.list_artifacts(c.info.run_id, "final/0-custom-nall")} >= {
            "final/0-custom-nall/card.json",
            "final/0-custom-nall/outcomes.csv",
            "final/0-custom-nall/card.md",
        }
    assert not [k for c in rest for k in c.data.metrics if k.startswith("final/")]
    # AutoAttack reports; the select slice chose the best, and the final stage changes nothing.
    (best,) = [c for c in children if c.data.tags[TRIAL_TAG] == parents[0].data.tags["satune.best_trial"]]
    assert proxy[best.info.run_id] == max(proxy.values())
    assert parents[0].data.metrics["best/final/aa_acc"] == best.data.metrics["final/aa_acc"]
    assert parents[0].data.metrics["best/proxy/pgd_acc"] == best.data.metrics["proxy/pgd_acc"]
    assert "final/aa_acc [95 %]" in done.stdout

    (other,) = rest  # later, with other settings: into that run
    later = satune("eval", other.info.run_id, "--tracking-uri", mlflow_server, "--attack", "apgd-ce", "--n", "50")
    assert later.returncode == 0, later.stdout + later.stderr
    m = client.get_run(other.info.run_id).data.metrics
    assert m["final/aa_n"] == 50 and m["final/aa_acc_lo"] <= m["final/aa_acc"] <= m["final/aa_acc_hi"]


def test_grid_cells_with_optuna_and_seed_replicates(tmp_path, mlflow_server, ray_address):
    """Two grid cells, Optuna in each, every configuration twice: repeats share their values, not
    their seeds; Optuna is told their mean; MLflow groups them; the parent holds mean, std and n."""
    name = "replicates"
    sweep = smoke_file(
        tmp_path,
        name,
        mlflow_server,
        **{
            "search": {
                "algorithm": "random",
                "num_samples": 1,
                "repeats": 2,
                "metric": "proxy/pgd_acc",
                "grid": {"method.fraction": [0.3, 0.6]},
                "space": {"method.w_A": {"loguniform": [0.5, 4]}},
            },
            "trial.train.epochs": 1,
        },
    )
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 trials (2 grid cells x 1 configurations x 2 repeats)" in done.stdout
    assert "per configuration, over its 2 repeats" in done.stdout
    client, parents, children = runs_of(mlflow_server, name)
    groups: dict[str, list] = {}
    for c in children:
        groups.setdefault(c.data.tags["satune.config"], []).append(c)
    assert len(groups) == 2 and all(len(g) == 2 for g in groups.values())
    seeds = {c.data.tags["satune.repeat"]: set() for c in children}
    for g in groups.values():
        assert {c.data.params["method.w_A"] for c in g} == {g[0].data.params["method.w_A"]}  # the same values
        assert len({c.data.params["seed"] for c in g}) == 2  # their own seeds
        for c in g:
            seeds[c.data.tags["satune.repeat"]].add(c.data.params["seed"])
    assert all(len(s) == 1 for s in seeds.values())  # shared seeds: repeat r trains with one seed everywhere
    study_names = optuna.get_all_study_names(
        JournalStorage(JournalFileBackend(str(run_dir_of(tmp_path, name) / "optuna.journal")))
    )
    assert sorted(study_names) == [f"{name}/method.fraction=0.3", f"{name}/method.fraction=0.6"]
    records = json.loads(
        open(client.download_artifacts(parents[0].info.run_id, "configurations.json", str(tmp_path))).read()
    )
    for record in records:
        g = groups[record["config"]]
        values = [c.data.metrics["proxy/pgd_acc"] for c in g]
        assert record["proxy/pgd_acc"]["n"] == 2 and record["proxy/pgd_acc"]["mean"] == pytest.approx(sum(values) / 2)
        study = study_of(run_dir_of(tmp_path, name), f"{name}/method.fraction={record['method.fraction']}")
        assert [t.value for t in study.trials] == [pytest.approx(sum(values) / 2)]  # Optuna saw the mean


def test_a_transfer_sweep_takes_its_sources_from_a_finished_sweep(tmp_path, mlflow_server, ray_address):
    """SAT's transfer setting: every finished trial of one sweep becomes the source of a trial of
    another, which trains a new head on the frozen backbone, found through the tracking server."""
    source = smoke_file(tmp_path, "sources", mlflow_server, **{"trial.train.epochs": 1})
    assert satune("sweep", source, "--address", ray_address, cwd=tmp_path).returncode == 0
    _, _, sources = runs_of(mlflow_server, "sources")
    target = smoke_file(
        tmp_path,
        "transfer",
        mlflow_server,
        **{
            "trial.data": {"dataset": "digits", "classes": [0, 1, 2, 3, 4]},
            "trial.method": {"kind": "transfer", "source": "(from the grid)", "hidden": 16},
            "search": {"metric": "proxy/pgd_acc", "grid": {"method.source": {"runs_of": "sources"}}},
        },
    )
    done = satune("sweep", target, "--address", ray_address, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sources: 2 trials of sources" in done.stderr and "transferred, by source" in done.stdout
    _, _, children = runs_of(mlflow_server, "transfer")
    assert sorted(c.data.params["method.source"] for c in children) == sorted(
        f"mlflow:{r.info.run_id}" for r in sources
    )
    for c in children:
        assert c.info.status == "FINISHED" and c.data.params["source.method.kind"] == "sat"
        assert c.data.params["method.hidden"] == "16" and "eval/pgd_acc" in c.data.metrics
    state = json.loads((run_dir_of(tmp_path, "transfer") / "sweep.json").read_text())
    assert len(state["sources"]["method.source"]) == 2  # found once; --resume keeps them


@pytest.mark.parametrize("reuse", [False, True], ids=["own-actors", "reused-actors"])
def test_killed_driver_resumes_with_every_trial_done_once(tmp_path, reuse):
    """Local mode: satune starts its own Ray and MLflow server; the kill takes them down with it.
    With reused actors the next trial starts at once, often before Tune has saved it: an orphan."""
    sweep = smoke_file(
        tmp_path,
        "killed",
        None,
        **{
            "search.num_samples": 3,
            "resources.max_concurrent": 1,
            "trial.train.epochs": 3,
            "resources.reuse_actors": reuse,
        },
    )
    proc = start_satune("sweep", sweep)

    def one_finished_and_emptied_and_the_next_running() -> bool:
        state = next(iter(tmp_path.glob("runs/killed/*/sweep.json")), None)
        uri = json.loads(state.read_text()).get("tracking_uri") if state else None
        if uri is None:
            return False
        _, _, children = runs_of(uri, "killed")
        finished = [c.data.tags[TRIAL_TAG] for c in children if c.info.status == "FINISHED"]
        return len(children) >= 2 and any(emptied(tune_dir_of(state.parent) / t) for t in finished)

    # A finished trial's checkpoints are emptied while the sweep runs; the kill then finds one so.
    wait_until(
        "one trial done, its checkpoints emptied, and the next running",
        one_finished_and_emptied_and_the_next_running,
        proc,
    )
    kill_session(proc)  # the driver, its Ray, its trials and its MLflow server: as if the machine went down

    resumed = satune("sweep", sweep, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with LocalServer(tmp_path / "runs") as server:  # what `satune ui` serves
        client, parents, children = runs_of(server.uri, "killed")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
        assert all(epochs_logged(client, c) == [0, 1, 2] for c in children)
        # A trial the driver started in the seconds before Tune saved its state is asked for again
        # on --resume, as a new trial: its first run is deleted (kept, restorable) and said so.
        orphans = client.search_runs([parents[0].info.experiment_id], run_view_type=ViewType.DELETED_ONLY)
        assert all(o.data.tags["satune.orphan"].startswith("its driver died before") for o in orphans)
    study = study_of(run_dir_of(tmp_path, "killed"), "killed")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3 and len(study.trials) == 3 + len(orphans)  # Optuna keeps them as FAIL
    assert len(study.get_trials(states=(TrialState.FAIL,))) == len(orphans)
    mlflow_values = sorted(round(float(c.data.params["method.w_A"]), 9) for c in children)
    assert sorted(round(t.params["method.w_A"], 9) for t in complete) == mlflow_values
    assert state_of(tmp_path, "killed")["status"] == "finished"
    assert not list(tune_dir_of(run_dir_of(tmp_path, "killed")).glob("*/checkpoint_*/state.pt"))
    again = satune("sweep", sweep, "--resume", cwd=tmp_path)
    assert again.returncode == 2 and "nothing to resume" in again.stderr


def test_the_local_mlflow_server_killed_mid_sweep_starts_again_and_nothing_is_lost(tmp_path):
    """The sweep's own MLflow server dies (SIGKILL to its process group) while trials log: satune
    starts it again on the same store and port, the trials' requests wait for it, and the sweep
    ends with Tune, Optuna and MLflow agreeing, every epoch logged once."""
    sweep = smoke_file(tmp_path, "serverdies", None, **{"trial.train.epochs": 6})
    proc = start_satune("sweep", sweep, "--no-report")
    uri = None

    def an_epoch_logged() -> bool:
        nonlocal uri
        state = next(iter(tmp_path.glob("runs/serverdies/*/sweep.json")), None)
        uri = json.loads(state.read_text()).get("tracking_uri") if state else None
        return uri is not None and any("train/loss" in c.data.metrics for c in runs_of(uri, "serverdies")[2])

    wait_until("a trial's first epoch in MLflow", an_epoch_logged, proc)
    port = uri.rsplit(":", 1)[1]
    (server,) = [pid for pid, args in processes() if args[1:4] == ["-m", "mlflow", "server"] and port in args]
    os.killpg(os.getpgid(server), signal.SIGKILL)  # the server and its workers
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert f"the local server died (exit -9); starting it again on {uri}" in output

    with LocalServer(tmp_path / "runs") as again:
        client, parents, children = runs_of(again.uri, "serverdies")
        assert [p.info.status for p in parents] == ["FINISHED"]
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        assert all(epochs_logged(client, c) == list(range(6)) for c in children)
        assert all("eval/pgd_acc" in c.data.metrics for c in children)
    study = study_of(run_dir_of(tmp_path, "serverdies"), "serverdies")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.value for t in study.trials) == sorted(c.data.metrics["proxy/pgd_acc"] for c in children)
    assert state_of(tmp_path, "serverdies")["status"] == "finished"


def test_a_shared_mlflow_server_that_stays_down_stops_the_sweep_resumably(tmp_path, ray_address):
    """A tracking server run by someone else dies mid-sweep and stays down past tracking.patience_s:
    the sweep stops as Ctrl-C stops it, with one line that says why; with the server back on the
    same store, --resume finishes every trial once."""
    store, port = tmp_path / "shared", free_port()
    server = LocalServer(store, port=port).start()
    uri = server.uri
    sweep = smoke_file(tmp_path, "down", uri, **{"trial.train.epochs": 6, "tracking.patience_s": 5})
    proc = start_satune("sweep", sweep, "--address", ray_address, "--no-report")
    try:
        wait_until(
            "a trial's first epoch in MLflow",
            lambda: any("train/loss" in c.data.metrics for c in runs_of(uri, "down")[2]),
            proc,
        )
        server.stop()  # as a crash: nobody restarts it within the patience
        output, _ = proc.communicate(timeout=300)
    finally:
        kill_session(proc)
    assert proc.returncode == 130, output
    assert f"MLflow: the MLflow server at {uri} has not answered for 5s; stopping the sweep" in output
    assert "Traceback" not in output

    with LocalServer(store, port=port):  # its operator starts it again
        done = satune("sweep", sweep, "--resume", "--address", ray_address, "--no-report", cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        client, parents, children = runs_of(uri, "down")
        assert [p.info.status for p in parents] == ["FINISHED"]
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        assert all(epochs_logged(client, c) == list(range(6)) for c in children)
    study = study_of(run_dir_of(tmp_path, "down"), "down")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.value for t in study.trials) == sorted(c.data.metrics["proxy/pgd_acc"] for c in children)


def test_an_interrupt_in_every_phase_then_resume_finishes_every_trial_once(tmp_path, mlflow_server, ray_address):
    """Start-up, trials running with one pending, all launched (SIGTERM, as a scheduler sends),
    the final summary (SIGTERM again, outside Tune): each ends with exit 130, the parent KILLED, no run left RUNNING, and a
    state --resume continues; the last resume finishes every trial once in Tune, Optuna and MLflow."""
    name, epochs = "phases", 4
    sweep = smoke_file(tmp_path, name, mlflow_server, **{"search.num_samples": 3, "trial.train.epochs": epochs})
    address = ["--address", ray_address]

    def interrupted(proc, phase: str) -> None:
        out = proc.stdout + proc.stderr if isinstance(proc, subprocess.CompletedProcess) else proc.stdout.read()
        assert proc.returncode == 130, f"{phase}: {out}"
        assert f"interrupted: continue with `satune sweep {sweep} --resume`" in out, phase
        assert "Traceback" not in out, phase
        _, parents, children = runs_of(mlflow_server, name)
        assert [p.info.status for p in parents] == ["KILLED"], phase
        assert not [c for c in children if c.info.status == "RUNNING"], phase
        assert state_of(tmp_path, name)["status"] == "interrupted", phase

    def trials_started(n: int):
        def ready() -> bool:
            client, _, children = runs_of(mlflow_server, name)
            running = [c for c in children if c.info.status == "RUNNING"]
            return len(children) >= n and any(epochs_logged(client, c) for c in running)

        return ready

    # 1. start-up: Ray has started, Tune has not
    done = satune("sweep", sweep, *address, env={"SATUNE_INTERRUPT_AT": "startup"})
    interrupted(done, "start-up")
    assert not any(p.name.startswith("tune") for p in run_dir_of(tmp_path, name).iterdir())

    # 2. Ctrl-C from a terminal (the whole process group) while two trials run and one waits
    proc = start_satune("sweep", sweep, "--resume", *address)
    wait_until("a trial's first epoch", trials_started(1), proc)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=180)
    interrupted(proc, "trials running")
    assert len(runs_of(mlflow_server, name)[2]) < 3  # the third had not started

    # 3. SIGTERM to the driver once every trial has launched (what used to "finish" the sweep)
    proc = start_satune("sweep", sweep, "--resume", *address)
    wait_until("the third trial's first epoch", trials_started(3), proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=180)
    interrupted(proc, "all launched")

    # 4. SIGTERM during the final summary, after every trial finished
    done = satune("sweep", sweep, "--resume", *address, env={"SATUNE_INTERRUPT_AT": "summary:SIGTERM"})
    interrupted(done, "summary")

    # 5. the last resume finishes the sweep: every trial exactly once, everywhere
    done = satune("sweep", sweep, "--resume", *address)
    assert done.returncode == 0, done.stdout + done.stderr
    client, parents, children = runs_of(mlflow_server, name)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert all(epochs_logged(client, c) == list(range(epochs)) for c in children)
    study = study_of(run_dir_of(tmp_path, name), name)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    trial_ids = {c.data.tags[TRIAL_TAG] for c in children}
    tune_dirs = {p.name for p in tune_dir_of(run_dir_of(tmp_path, name)).iterdir() if p.is_dir()}
    assert tune_dirs == trial_ids
    assert state_of(tmp_path, name)["status"] == "finished"


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_sigterm_ends_a_sweep_started_with_sigint_ignored(tmp_path, mlflow_server, ray_address):
    """A script's `satune sweep ... &` (or nohup) starts satune with SIGINT ignored: SIGTERM, which
    ends a sweep the way Ctrl-C does, must still end it resumably, before, during and after Tune."""
    name = "ignored"
    sweep = smoke_file(tmp_path, name, mlflow_server, **{"search.num_samples": 2, "trial.train.epochs": 2})

    def interrupted(returncode: int, out: str, phase: str) -> None:
        assert returncode == 130 and "Traceback" not in out, f"{phase}: {out}"
        assert f"interrupted: continue with `satune sweep {sweep} --resume`" in out, phase
        assert state_of(tmp_path, name)["status"] == "interrupted", phase
        assert [p.info.status for p in runs_of(mlflow_server, name)[1]] == ["KILLED"], phase

    done = satune(
        "sweep",
        sweep,
        "--address",
        ray_address,
        env={"SATUNE_INTERRUPT_AT": "startup:SIGTERM"},
        preexec_fn=_sigint_ignored,
    )
    interrupted(done.returncode, done.stdout + done.stderr, "start-up")

    proc = start_satune("sweep", sweep, "--resume", "--address", ray_address, preexec_fn=_sigint_ignored)

    def training() -> bool:
        client, _, children = runs_of(mlflow_server, name)
        return any(epochs_logged(client, c) for c in children if c.info.status == "RUNNING")

    wait_until("a trial's first epoch", training, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    interrupted(proc.returncode, out, "trials running")

    done = satune(
        "sweep",
        sweep,
        "--resume",
        "--address",
        ray_address,
        env={"SATUNE_INTERRUPT_AT": "summary:SIGTERM"},
        preexec_fn=_sigint_ignored,
    )
    interrupted(done.returncode, done.stdout + done.stderr, "summary")

    done = satune("sweep", sweep, "--resume", "--address", ray_address, preexec_fn=_sigint_ignored)
    assert done.returncode == 0, done.stdout + done.stderr
    client, parents, children = runs_of(mlflow_server, name)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 2 and all(epochs_logged(client, c) == [0, 1] for c in children)


def test_on_resume_only_a_trial_that_ran_to_its_end_is_not_run_again(tmp_path, mlflow_server):
    """What a restored trial asks its MLflow run before it trains (satune.tune.trainable)."""
    from satune import tracking
    from satune.specs import TrialSpec
    from satune.tune.trainable import TrialContext, _ended, _finished_result

    experiment = tracking.ensure_experiment(mlflow_server, "finished-result")
    client = MlflowClient(mlflow_server)

    def run(status: str, tags: dict, result: dict | None = None) -> str:
        run_id = client.create_run(experiment, tags=tags).info.run_id
        if result is not None:
            tracking.log_dict(mlflow_server, run_id, result, "result.json")
        client.set_terminated(run_id, status)
        return run_id

    done = run("FINISHED", {tracking.INTEGRITY_TAG: "ok"}, {"metrics": {"eval/pgd_acc": 0.5}})
    assert _finished_result(mlflow_server, done, tmp_path) == {"eval/pgd_acc": 0.5}
    stopped = run("FINISHED", {"satune.stopped_early": "true"})  # the scheduler ended it between reports
    killed = run("KILLED", {tracking.INTEGRITY_TAG: "ok"}, {"metrics": {}})  # killed before its very end
    assert _finished_result(mlflow_server, stopped, tmp_path) is None
    assert _finished_result(mlflow_server, killed, tmp_path) is None
    assert _finished_result(mlflow_server, None, tmp_path) is None

    # What it then reports again: the final result as Tune is told it; or, from a checkpoint emptied
    # once Tune had it finished (tune.pruning), the last epoch of a trial its scheduler stopped.
    ctx = TrialContext(
        base={},
        sweep_seed=0,
        tracking_uri=mlflow_server,
        experiment_id=experiment,
        parent_run_id="",
        threads=1,
        told=("eval/pgd_acc",),
    )
    spec = TrialSpec.model_validate(
        {
            "data": {"dataset": "digits"},
            "method": {"kind": "clean"},
            "threat": {"norm": "linf", "eps": 0.1},
            "train": {"epochs": 3},
        }
    )
    last = {"epoch": 1, "select/pgd_acc": 0.4}

    def restored(run_id: str, emptied: bool) -> tuple[dict, Path]:
        folder = tmp_path / f"{run_id}-{emptied}"
        folder.mkdir()
        meta = {"run_id": run_id, "epoch": 1, "history": [last]}
        (folder / "meta.json").write_text(json.dumps(meta))
        if not emptied:
            (folder / "state.pt").write_text("weights")
        return meta, folder

    assert _ended(ctx, spec, *restored(done, emptied=True), tmp_path)[1] == {"eval/pgd_acc": 0.5, "epoch": 2}
    why, again = _ended(ctx, spec, *restored(stopped, emptied=True), tmp_path)
    assert again == last and "stopped by its scheduler" in why
    assert _ended(ctx, spec, *restored(stopped, emptied=False), tmp_path) is None  # it trains on
    assert _ended(ctx, spec, {}, None, tmp_path) is None  # a fresh start


def test_ctrl_c_while_the_local_mlflow_server_starts(tmp_path, ray_address):
    """Interrupted before any run exists: no server outlives satune, and --resume starts the sweep."""
    sweep = smoke_file(tmp_path, "early", None, **{"search.num_samples": 1, "trial.train.epochs": 1})
    proc = start_satune("sweep", sweep, "--address", ray_address)
    log = tmp_path / "runs" / "mlflow" / "server.log"
    wait_until("the MLflow server to be launched", log.exists, proc, timeout=60)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in out, out
    assert "--resume" in out
    db = str(tmp_path / "runs" / "mlflow" / "mlflow.db")
    # No server left: the process that satune stopped is gone (waited for, not timed: a loaded machine is slow)
    wait_until("the MLflow server to exit", lambda: subprocess.run(["pgrep", "-f", db]).returncode == 1, timeout=60)
    assert state_of(tmp_path, "early")["status"] == "interrupted"
    resumed = satune("sweep", sweep, "--resume", "--address", ray_address, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert state_of(tmp_path, "early")["status"] == "finished"


def test_bad_sweep_file_starts_nothing(tmp_path, mlflow_server):
    sweep = smoke_file(tmp_path, "bad", mlflow_server, **{"trial.method.fraction": 1.5})
    code = (
        "import sys; from satune.cli import main; sys.argv = ['satune', 'sweep', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'ray' in sys.modules, 'mlflow' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == "exit 2 False False"
    assert proc.stderr.strip() == f"error: {sweep}: trial.method.fraction: must be in (0, 1], got 1.5"
    assert not (tmp_path / "runs").exists()
    assert runs_of(mlflow_server, "bad")[1:] == ([], [])


def test_unreachable_tracking_server_fails_before_any_work(tmp_path):
    sweep = smoke_file(tmp_path, "offline", "http://127.0.0.1:9")
    done = satune("sweep", sweep, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert re.fullmatch(
        r"error: tracking.uri: cannot reach the MLflow server at http://127.0.0.1:9 \(.*\)", done.stderr.strip()
    )
    assert not (tmp_path / "runs").exists()


def test_resources_no_node_has_fail_at_once(tmp_path, mlflow_server, ray_address):
    sweep = smoke_file(tmp_path, "nogpu", mlflow_server, **{"resources.gpu": 1})
    start = time.monotonic()
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path, timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "resources: a trial needs cpu 1, gpu 1 but no node has that" in done.stderr
    assert time.monotonic() - start < 120
    assert runs_of(mlflow_server, "nogpu")[1:] == ([], [])  # refused before any run was created
    assert not (tmp_path / "runs").exists()
