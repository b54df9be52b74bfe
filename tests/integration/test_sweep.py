import json
import os
import re
import shlex
import signal
import time

import optuna
import pytest
from conftest import kill_session, satune, smoke_file, start_satune
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from satune.tracking import PARENT_TAG, SWEEP_TAG, LocalServer

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


def only_run_dir(tmp_path, name):
    (run_dir,) = (tmp_path / "runs" / name).iterdir()
    return run_dir


def test_smoke_sweep_end_to_end(tmp_path, mlflow_server):
    sweep = smoke_file(tmp_path, "e2e", mlflow_server)
    done = satune("sweep", sweep, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr

    client, parents, children = runs_of(mlflow_server, "e2e")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2  # num_samples
    assert all(c.data.tags[PARENT_TAG] == parents[0].info.run_id for c in children)
    for c in children:
        assert c.info.status == "FINISHED"
        assert "method.w_A" in c.data.params and "eval/pgd_acc" in c.data.metrics
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "train/loss")]
        assert steps == [0, 1]  # one point per epoch
        assert {a.path for a in client.list_artifacts(c.info.run_id)} >= {"result.json", "model"}

    # Optuna's journal holds the same trials, with the same values
    study = study_of(only_run_dir(tmp_path, "e2e"), "e2e")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(study.trials) == len(complete) == 2
    by_param = {round(float(c.data.params["method.w_A"]), 9): c.data.metrics["eval/pgd_acc"] for c in children}
    assert {round(t.params["method.w_A"], 9): t.values[0] for t in complete} == pytest.approx(by_param)

    # the printed command reproduces the best trial without Ray or MLflow
    line = next(ln for ln in done.stdout.splitlines() if ln.strip().startswith("satune run"))
    args = shlex.split(line)[2:]
    out = tmp_path / "repro"
    rerun = satune("run", *args, "--out", out, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    best = max(children, key=lambda c: c.data.metrics["eval/pgd_acc"])
    for key in ("eval/pgd_acc", "eval/clean_acc", "train/loss"):
        assert metrics[key] == pytest.approx(best.data.metrics[key], abs=1e-12), key


def test_a_failing_trial_resumes_from_its_checkpoint_in_the_same_run(tmp_path, mlflow_server):
    sweep = smoke_file(tmp_path, "retry", mlflow_server, **{"trial.train.epochs": 3})
    done = satune("sweep", sweep, cwd=tmp_path, env={"SATUNE_FAIL_AT_EPOCH": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    client, parents, children = runs_of(mlflow_server, "retry")
    assert len(children) == 2  # never two runs for one trial
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["satune.resumed_after_epoch"] == "1"  # retried from epoch 1's checkpoint
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "train/loss")]
        assert sorted(steps) == [0, 1, 2]  # epochs 0 and 1 once, then 2 after the retry
    trials = study_of(only_run_dir(tmp_path, "retry"), "retry").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def test_killed_driver_resumes_with_every_trial_done_once(tmp_path):
    """Local mode: satune starts its own MLflow server; the kill takes it down with everything else."""
    sweep = smoke_file(tmp_path, "killed", None, **{
        "search.num_samples": 4, "resources.max_concurrent": 1, "trial.train.epochs": 3,
    })  # fmt: skip
    proc = start_satune("sweep", sweep)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until one trial finished and the next one runs
        state = next(iter(tmp_path.glob("runs/killed/*/sweep.json")), None)
        if state is not None and "tracking_uri" in json.loads(state.read_text()):
            _, _, children = runs_of(json.loads(state.read_text())["tracking_uri"], "killed")
            if sum(c.info.status == "FINISHED" for c in children) >= 1 and len(children) >= 2:
                break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(1)
    kill_session(proc)  # the driver, its Ray, its trials and its MLflow server: as if the machine went down

    resumed = satune("sweep", sweep, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with LocalServer(tmp_path / "runs") as server:  # what `satune ui` serves
        _, parents, children = runs_of(server.uri, "killed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    run_dir = only_run_dir(tmp_path, "killed")
    study = study_of(run_dir, "killed")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4 and not study.get_trials(states=(TrialState.RUNNING,))
    mlflow_values = sorted(round(float(c.data.params["method.w_A"]), 9) for c in children)
    assert sorted(round(t.params["method.w_A"], 9) for t in complete) == mlflow_values
    assert json.loads((run_dir / "sweep.json").read_text())["status"] == "finished"
    again = satune("sweep", sweep, "--resume", cwd=tmp_path)
    assert again.returncode == 2 and "nothing to resume" in again.stderr


def test_bad_sweep_file_starts_nothing(tmp_path, mlflow_server):
    sweep = smoke_file(tmp_path, "bad", mlflow_server, **{"trial.method.fraction": 1.5})
    code = ("import sys; from satune.cli import main; sys.argv = ['satune', 'sweep', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'ray' in sys.modules, 'mlflow' in sys.modules)")  # fmt: skip
    import subprocess
    import sys

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


def test_resources_no_node_has_fail_at_once(tmp_path, mlflow_server):
    sweep = smoke_file(tmp_path, "nogpu", mlflow_server, **{"resources.gpu": 1})
    start = time.monotonic()
    done = satune("sweep", sweep, cwd=tmp_path, timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "resources: a trial needs cpu 1, gpu 1 but no node has that" in done.stderr
    assert time.monotonic() - start < 120
    _, parents, children = runs_of(mlflow_server, "nogpu")
    assert parents[0].info.status == "FAILED" and children == []


def test_ctrl_c_ends_the_parent_run_killed_and_resume_finishes_it(tmp_path, mlflow_server):
    sweep = smoke_file(tmp_path, "sigint", mlflow_server, **{"search.num_samples": 3, "resources.max_concurrent": 1,
                                                             "trial.train.epochs": 3})  # fmt: skip
    proc = start_satune("sweep", sweep)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until the first trial has reported an epoch
        _, _, children = runs_of(mlflow_server, "sigint")
        if children and MlflowClient(mlflow_server).get_metric_history(children[0].info.run_id, "train/loss"):
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert "--resume" in out
    _, parents, _ = runs_of(mlflow_server, "sigint")
    assert parents[0].info.status == "KILLED"
    assert json.loads((only_run_dir(tmp_path, "sigint") / "sweep.json").read_text())["status"] == "interrupted"

    resumed = satune("sweep", sweep, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _, parents, children = runs_of(mlflow_server, "sigint")
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
