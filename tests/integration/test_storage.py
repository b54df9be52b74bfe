"""A sweep whose storage is an object store (s3://), on a Ray cluster whose nodes reach the
bucket, tracked by an MLflow server: killed, then resumed on a machine that has none of its files."""

import json
import re
import shutil
import time

import pytest
from conftest import kill_session, ray_head, satune, smoke_file, start_satune, wait_until
from mlflow.entities import ViewType
from optuna.trial import TrialState
from test_sweep import epochs_logged, runs_of, study_of

from satune.sweep.store import Storage
from satune.tracking import NOTE_TAG, TRIAL_TAG

pytestmark = pytest.mark.integration


def test_a_sweep_kept_in_s3_is_killed_and_resumed_on_another_machine(tmp_path, s3, mlflow_server):
    # The cluster's nodes reach the bucket with their own credentials (here: the environment they
    # start in, as an instance role or a mounted secret would give them).
    with ray_head(tmp_path) as address:
        sweep = smoke_file(
            tmp_path,
            "s3sweep",
            mlflow_server,
            storage=f"{s3}/sweeps",
            **{
                "search.num_samples": 3,
                "resources.max_concurrent": 1,
                "trial.train.epochs": 3,
            },
        )
        machine_a = tmp_path / "machine-a"
        proc = start_satune("sweep", sweep, "--address", address, env={"SATUNE_MIRROR": str(machine_a)})

        def one_finished_and_the_next_running() -> bool:
            _, _, children = runs_of(mlflow_server, "s3sweep")
            return sum(c.info.status == "FINISHED" for c in children) >= 1 and len(children) >= 2

        wait_until("one trial done and the next running", one_finished_and_the_next_running, proc)
        kill_session(proc)  # the driver's machine is gone: its trials end with it, the cluster stays
        (run_dir,) = machine_a.glob("s3/*/sweeps/s3sweep/*")
        shutil.rmtree(machine_a)

        machine_b = {"SATUNE_MIRROR": str(tmp_path / "machine-b")}
        resumed = satune("sweep", sweep, "--resume", "--address", address, env=machine_b, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"resuming {run_dir} (Tune's state: " in resumed.stderr

    client, parents, children = runs_of(mlflow_server, "s3sweep")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert all(epochs_logged(client, c) == [0, 1, 2] for c in children)
    # A trial started in the seconds before Tune last saved its state is asked for again: its first
    # run is deleted. The bucket's journal is copied up as Tune saves, so it may never know of it.
    orphans = client.search_runs([parents[0].info.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert all(o.data.tags["satune.orphan"].startswith("its driver died before") for o in orphans)
    # The journal came back from the bucket into the folder the run began in: Optuna agrees.
    study = study_of(run_dir, "s3sweep")
    complete, failed = (study.get_trials(states=(s,)) for s in (TrialState.COMPLETE, TrialState.FAIL))
    assert len(complete) == 3 and len(study.trials) == 3 + len(failed) and len(failed) <= len(orphans)
    assert sorted(round(t.params["method.w_A"], 9) for t in complete) == sorted(
        round(float(c.data.params["method.w_A"]), 9) for c in children
    )

    # What the bucket holds: the run's state and journal, Tune's state, every trial's checkpoints.
    store = Storage(f"{s3}/sweeps")
    kept = [p.removeprefix(store.url("s3sweep", run_dir.name) + "/") for p in store.fs.find(store.url("s3sweep"))]
    state = json.loads(store.read("s3sweep", run_dir.name, "sweep.json"))
    tune_name = state["tune_name"]
    assert state["status"] == "finished"
    assert "optuna.journal" in kept and any(p.startswith(f"{tune_name}/experiment_state-") for p in kept)
    trials = {c.data.tags[TRIAL_TAG] for c in children}
    for trial in trials:
        checkpoints = {p.split("/")[2] for p in kept if p.startswith(f"{tune_name}/{trial}/checkpoint_")}
        assert 1 <= len(checkpoints) <= 2, (trial, checkpoints)  # num_to_keep
    assert f"- **run directory**: `{s3}/sweeps/s3sweep/{run_dir.name}`" in parents[0].data.tags[NOTE_TAG]
    assert not list(tmp_path.rglob("s3:")) and not (tmp_path / "runs").exists()

    # A third machine draws the report, the Optuna figures from the journal in the bucket, and
    # AutoAttacks the sweep's winner later (the newest run, found in the bucket).
    shutil.rmtree(run_dir)
    machine_c = {"SATUNE_MIRROR": str(tmp_path / "machine-c")}
    report = satune("report", sweep, "--out", tmp_path / "report", env=machine_c)
    assert report.returncode == 0, report.stdout + report.stderr
    assert (tmp_path / "report" / "optuna_history.png").exists()
    later = satune(
        "eval", sweep, "--version", "custom", "--attack", "apgd-ce", "--n", "30", "--top-k", "1", env=machine_c
    )
    assert later.returncode == 0, later.stdout + later.stderr
    best = max(children, key=lambda c: c.data.metrics["proxy/pgd_acc"])  # the winner, on the select slice
    assert client.get_run(best.info.run_id).data.metrics["final/aa_n"] == 30


def test_a_sweep_waits_out_a_short_outage_of_its_object_store_and_stops_resumably_in_a_long_one(
    tmp_path, s3_endpoint, mlflow_server
):
    bucket, endpoint = s3_endpoint
    sweep = smoke_file(
        tmp_path,
        "outage",
        mlflow_server,
        storage=f"{bucket}/sweeps",
        **{
            "search.num_samples": 3,
            "resources.max_concurrent": 1,
            "trial.train.epochs": 3,
            "storage_patience_s": 15,
        },
    )
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        proc = start_satune("sweep", sweep, stdout=out)  # (Tune's tracebacks of the outage outgrow a pipe)

        def trials(finished: int):
            def ready() -> bool:
                children = runs_of(mlflow_server, "outage")[2]
                return sum(c.info.status == "FINISHED" for c in children) == finished and len(children) > finished

            return ready

        # A short outage (a store restarting) while a trial trains: it waits, and nothing fails.
        wait_until("the first trial done and the second running", trials(1), proc)
        endpoint.stop()
        time.sleep(6)
        endpoint.start()
        # A long one: the sweep stops as Ctrl-C stops it, within a bound, and says why in one line.
        wait_until("two trials done and the third running", trials(2), proc)
        endpoint.stop()
        assert proc.wait(timeout=300) == 130
    stopped = log.read_text()
    (run_dir,) = (tmp_path / "mirror").glob("s3/*/sweeps/outage/*")
    assert re.search(
        rf"^storage: {bucket}/sweeps has not answered for 15s \(.*\); stopping the sweep: once it answers "
        rf"again, --resume continues \(here: {run_dir} holds the run's newest files\)$",
        stopped,
        re.M,
    ), stopped[-3000:]
    assert "failed for good" not in stopped
    assert "Traceback" not in stopped and "Tuner.restore" not in stopped, stopped[-3000:]  # the one line says it
    assert stopped.count("could not copy") <= 2, stopped[-3000:]  # once per outage, not at every save
    client, parents, children = runs_of(mlflow_server, "outage")
    first = {c.data.tags[TRIAL_TAG]: c.info.status for c in children}
    assert parents[0].info.status == "KILLED" and sorted(first.values()) == ["FINISHED", "FINISHED", "KILLED"]
    for trial in first:  # no trial started twice: the short outage spent none of their retries
        assert len(re.findall(rf"trial {trial} started", stopped)) == 1, stopped[-3000:]
    assert json.loads((run_dir / "sweep.json").read_text())["status"] == "interrupted"
    assert sorted(t.state.name for t in study_of(run_dir, "outage").trials) == ["COMPLETE", "COMPLETE", "RUNNING"]

    # While the store is away, --resume says so before it starts anything; once it is back, it
    # finishes every trial exactly once. The two that finished are not trained again (Tune's saved
    # state may not know they finished: it went up every 2 s, until the store went away).
    early = satune("sweep", sweep, "--resume")
    assert early.returncode == 2, early.stderr
    assert re.fullmatch(rf"error: storage: cannot read {bucket}/sweeps: EndpointConnectionError: .*\n", early.stderr), (
        early.stderr
    )
    endpoint.start()
    resumed = satune("sweep", sweep, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    client, parents, children = runs_of(mlflow_server, "outage")
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert all(epochs_logged(client, c) == [0, 1, 2] for c in children)
    for trial, status in first.items():
        if status == "FINISHED":
            assert f"trial {trial} epoch" not in resumed.stderr, resumed.stderr
    assert "Cannot tell" not in resumed.stdout + resumed.stderr  # (Optuna is not told of them twice)
    # The third trial started seconds before the store went away: if Tune's state never took it up,
    # it was asked for again (as in the test above): its first run is deleted, its Optuna trial FAIL.
    orphans = client.search_runs([parents[0].info.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    study = study_of(run_dir, "outage")
    complete, failed = (study.get_trials(states=(s,)) for s in (TrialState.COMPLETE, TrialState.FAIL))
    assert len(complete) == 3 and len(study.trials) == 3 + len(failed) and len(failed) == len(orphans) <= 1
