"""The sweep driver's own logic, without starting Ray: plans, resume checks, best trials, seeds."""

import copy
import json
import logging
import stat
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from satune.specs import apply_overrides, parse_sweep
from satune.sweep import rundir
from satune.sweep.plan import plan_lines
from satune.sweep.rundir import STATE_FILE, SweepError, latest_run_dir, prepare, writable_by_others
from satune.sweep.summary import (
    REPEAT_KEY,
    SweepResult,
    TrialRow,
    best_of,
    pareto_front,
    reproduce_command,
    transfer_matrix,
)
from satune.tune import cluster
from satune.tune.space import optuna_space
from satune.tune.trainable import TrialContext, resolve_trial
from satune.tune.tuner import _tune_config, _tune_quieted


def sweep(tmp_path, **over):
    data = {
        "name": "t",
        "storage": str(tmp_path / "runs"),
        "trial": {
            "data": {"dataset": "digits"},
            "threat": {"norm": "linf", "eps": 0.1},
            "method": {"kind": "sat", "fraction": 0.5},
        },
        "search": {"space": {"method.w_A": {"loguniform": [0.5, 4]}, "train.epochs": {"int": [1, 3]}}},
    }
    data.update(over)
    return parse_sweep(data)


def row(tid, **metrics):
    return TrialRow(tid, "TERMINATED", {"method.w_A": 1.0}, metrics, seed=7)


def test_pareto_front_and_best():
    rows = [row("a", x=0.9, y=0.1), row("b", x=0.5, y=0.5), row("c", x=0.4, y=0.4), row("d", x=0.5, y=0.5)]
    front = pareto_front(rows, ["x", "y"], ["max", "max"])
    assert [r.trial_id for r in front] == ["a", "b", "d"]  # c is dominated by b; b and d tie
    best, front = best_of(rows, ["x", "y"], ["max", "max"])
    assert best.trial_id == "a" and len(front) == 3
    best, front = best_of(rows, ["y"], ["min"])
    assert best.trial_id == "a" and front == []
    assert best_of([row("e")], ["x"], ["max"]) == (None, [])  # stopped early: no final metric


def test_reproduce_command_lists_values_seed_and_threads(tmp_path):
    r = TrialRow("a", "TERMINATED", {"method.w_A": 2.5, "method.split": "class", REPEAT_KEY: 1}, {}, seed=42)
    line = reproduce_command(tmp_path / "s.yaml", r, threads=1)
    assert line == (
        f"satune run {tmp_path / 's.yaml'} --set 'method.split=\"class\"' --set method.w_A=2.5 "
        "--set seed=42 --set runtime.threads=1"
    )


def test_reproduce_command_survives_a_real_shell(tmp_path):
    """Lists, spaces, tiny floats and a hostile value from a shared sweep file: bash hands satune
    exactly the arguments it needs, runs nothing else, and --set reads back the same values."""
    config = {
        "method.classes": ["3", "5"],
        "data.root": "/x/$(touch PWNED) `touch PWNED2`; y's",
        "train.lr": 1e-05,
        "method.split": "class",
        "method.w_A": 2.0,
        "train.epochs": 3,
    }
    source = tmp_path / "my sweeps" / "s.yaml"
    line = reproduce_command(source, TrialRow("a", "TERMINATED", config, {}, seed=7), threads=None)
    shell = "satune() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"; }; " + line
    argv = json.loads(
        subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    )
    assert not list(tmp_path.glob("PWNED*"))
    assert argv[:2] == ["run", str(source)]
    sets = argv[3::2]
    assert argv[2::2] == ["--set"] * len(sets)
    back = apply_overrides({"method": {"kind": "sat"}}, sets)
    assert back["method"] == {"kind": "sat", "classes": ["3", "5"], "split": "class", "w_A": 2.0}
    assert back["data"] == {"root": config["data.root"]} and back["seed"] == 7
    assert back["train"] == {"lr": 1e-05, "epochs": 3} and isinstance(back["train"]["lr"], float)


def test_trial_seeds(tmp_path):
    spec = sweep(tmp_path)
    ctx = TrialContext(
        base=spec.trial.model_dump(mode="json", exclude_unset=True),
        sweep_seed=3,
        tracking_uri="",
        experiment_id="",
        parent_run_id="",
        threads=2,
    )
    a = resolve_trial(ctx, {"method.w_A": 1.0, "train.epochs": 2})
    b = resolve_trial(ctx, {"method.w_A": 2.0, "train.epochs": 2})
    assert a.method.w_A == 1.0 and a.train.epochs == 2 and a.runtime.threads == 2
    assert a.seed == b.seed  # shared: trials differ by their values alone
    assert resolve_trial(ctx, {"method.w_A": 1.0, REPEAT_KEY: 1}).seed != a.seed  # a repeat gets its own
    assert resolve_trial(ctx, {"seed": 5}).seed == 5  # seed replicates: a searched seed is used as given
    per = TrialContext(**{**ctx.__dict__, "seeds": "per_config"})
    assert resolve_trial(per, {"method.w_A": 1.0}).seed != resolve_trial(per, {"method.w_A": 2.0}).seed


def test_optuna_space_follows_the_domains(tmp_path):
    space = optuna_space(sweep(tmp_path).search)
    assert space["method.w_A"].log and (space["method.w_A"].low, space["method.w_A"].high) == (0.5, 4)
    assert (space["train.epochs"].low, space["train.epochs"].high) == (1, 3)


def test_plan_names_trials_and_space(tmp_path):
    text = "\n".join(plan_lines(sweep(tmp_path)))
    assert "8 trials (8 configurations) of sat on digits" in text and "search method.w_A: loguniform" in text


def test_resume_refuses_what_cannot_resume(tmp_path):
    spec = sweep(tmp_path)
    source = tmp_path / "s.yaml"
    source.write_text("name: t\n")
    with pytest.raises(SweepError, match="no earlier run"):
        prepare(spec, source, resume=True)
    run = prepare(spec, source, resume=False)
    assert run.path is None and not (tmp_path / "runs").exists()  # nothing is written before it is claimed
    run_dir = run.claim()
    assert json.loads((run_dir / STATE_FILE).read_text())["status"] == "starting"
    assert prepare(sweep(tmp_path, resources={"max_concurrent": 1}), source, resume=True).path == run_dir
    with pytest.raises(SweepError, match="changed in search"):
        prepare(sweep(tmp_path, search={"num_samples": 3}), source, resume=True)
    run.save(status="finished")
    with pytest.raises(SweepError, match="nothing to resume"):
        prepare(spec, source, resume=True)


def test_runs_started_in_the_same_second_never_share_a_directory(tmp_path, monkeypatch):
    spec = sweep(tmp_path)
    source = tmp_path / "s.yaml"
    source.write_text("name: t\n")
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt: "20261124-101010")
    dirs = [prepare(spec, source, resume=False).claim() for _ in range(11)]
    assert len(set(dirs)) == 11 and dirs[0].name == "20261124-101010" and dirs[1].name == "20261124-101010-2"
    assert latest_run_dir(spec) == dirs[-1]  # -11 is newer than -2, although it sorts before it as text


def test_storage_writable_by_others_is_noticed(tmp_path):
    shared, sticky = tmp_path / "shared", tmp_path / "sticky"
    for d, mode in ((shared, 0o777), (sticky, 0o1777)):
        d.mkdir()
        d.chmod(mode)
        (d / "runs").mkdir()
    tmp_path.chmod(0o700)
    assert writable_by_others(shared / "runs") == shared
    assert writable_by_others(sticky / "runs") is None  # like /tmp: others cannot replace our files


def test_the_ray_token_is_private(tmp_path, monkeypatch):
    token = tmp_path / "ray" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    cluster.ensure_private_token()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    first = token.read_text()
    token.chmod(0o644)  # as Ray writes it
    cluster.ensure_private_token()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == first  # kept, made private


def searcher(tmp_path, **search):
    space = {"method.w_A": {"loguniform": [0.5, 4]}, "train.epochs": {"int": [1, 3]}}
    spec = sweep(tmp_path, search={"num_samples": 12, "space": space, **search})
    (tmp_path / "run").mkdir(exist_ok=True)
    return _tune_config(spec, tmp_path / "run").search_alg, spec


@pytest.mark.parametrize("algorithm", ["tpe", "gp", "cmaes", "qmc", "random"])
def test_every_sampler_proposes_inside_the_space_and_learns(tmp_path, algorithm):
    search, spec = searcher(tmp_path, algorithm=algorithm)
    for i in range(12):  # past every sampler's start-up trials
        config = search.suggest(f"t{i}")
        assert 0.5 <= config["method.w_A"] <= 4 and 1 <= config["train.epochs"] <= 3
        search.on_trial_complete(f"t{i}", {"proxy/pgd_acc": 1 / config["method.w_A"], "done": True})
    study = optuna.load_study(study_name="t", storage=search._storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 12
    assert study.best_value == max(1 / t.params["method.w_A"] for t in study.trials)


@pytest.mark.parametrize("metric", ["proxy/pgd_acc", ["proxy/clean_acc", "proxy/pgd_acc"]])
def test_a_trial_the_scheduler_stopped_is_pruned_in_optuna(tmp_path, metric):
    search, _ = searcher(tmp_path, metric=metric, mode="max", algorithm="random")
    search.suggest("stopped")
    search.on_trial_complete("stopped", {"select/pgd_acc": 0.3, "done": True})  # a rung's report, no eval/*
    search.suggest("failed")
    search.on_trial_complete("failed", None, error=True)
    search.suggest("done")
    search.on_trial_complete("done", {"proxy/clean_acc": 0.9, "proxy/pgd_acc": 0.5, "done": True})
    study = optuna.load_study(study_name="t", storage=search._storage)
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]


def test_the_class_transfer_matrix_averages_repeats(tmp_path):
    spec = parse_sweep(
        {
            "name": "m",
            "storage": str(tmp_path / "runs"),
            "trial": {
                "data": {"dataset": "digits", "classes": [0, 1, 2]},
                "threat": {"norm": "linf", "eps": 0.1},
                "method": {"kind": "sat", "split": "class", "classes": [0]},
            },
            "search": {"grid": {"method.classes": [["0"], ["1"]]}, "repeats": 2, "metric": "proxy/pgd_acc"},
        }
    )

    def row(tid, attacked, repeat, base):
        metrics = {f"eval/class_pgd_acc/{c}": base + 0.1 * i + 0.02 * repeat for i, c in enumerate("012")}
        metrics |= {"eval/pgd_acc_A": base, "eval/pgd_acc_B": base + 0.05}
        return TrialRow(tid, "TERMINATED", {"method.classes": attacked, REPEAT_KEY: repeat}, metrics)

    rows = [row("a", ["0"], 0, 0.5), row("b", ["0"], 1, 0.5), row("c", ["1"], 0, 0.3), row("d", ["1"], 1, 0.3)]
    title, header, lines = transfer_matrix(spec, SweepResult(tmp_path, rows, None))
    assert title.startswith("pgd accuracy (eval)") and header == ["attacked", "0", "1", "2", "A_val", "B_val"]
    assert lines == [
        ["0", "0.5100", "0.6100", "0.7100", "0.5000", "0.5500"],
        ["1", "0.3100", "0.4100", "0.5100", "0.3000", "0.3500"],
    ]
    assert transfer_matrix(sweep(tmp_path), SweepResult(tmp_path, rows, None)) is None  # not a sweep over classes


def test_a_run_begun_before_satune_gained_fields_resumes_after_the_upgrade(tmp_path):
    """The saved spec of a run begun by an older satune lacks the fields added since: at their
    defaults they are no change; set to something else, or any other change, they are."""
    source = tmp_path / "s.yaml"
    source.write_text("name: t\n")
    run = prepare(sweep(tmp_path), source, resume=False)
    run_dir = run.claim()
    del run.state["spec"]["trial"]["runtime"]["channels_last"]  # as an older satune saved it
    run.save(status="interrupted")
    assert prepare(sweep(tmp_path), source, resume=True).path == run_dir
    base = {
        "data": {"dataset": "digits"},
        "threat": {"norm": "linf", "eps": 0.1},
        "method": {"kind": "sat", "fraction": 0.5},
    }
    for change in ({"runtime": {"channels_last": True}}, {"eval": {"pgd_steps": 3}}):
        with pytest.raises(SweepError, match="changed in trial"):
            prepare(sweep(tmp_path, trial={**base, **change}), source, resume=True)


def test_a_trial_optuna_was_told_of_before_the_driver_stopped_is_told_once(tmp_path, caplog):
    """A resumed searcher (saved before the trial finished) hears of its end again: no warning,
    and Optuna keeps the value it was told first."""
    search, _ = searcher(tmp_path, algorithm="random")
    search.suggest("t")
    saved = copy.deepcopy(search._completed_trials)  # Tune's saved searcher: from before the end
    search.on_trial_complete("t", {"proxy/pgd_acc": 0.5, "done": True})
    search._completed_trials = saved
    search.on_trial_complete("t", {"proxy/pgd_acc": 0.7, "done": True})
    study = optuna.load_study(study_name="t", storage=search._storage)
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, 0.5)]
    assert "Cannot tell" not in caplog.text


def test_tune_says_nothing_satune_says_better(caplog):
    """Its Tuner.restore hint (satune prints --resume), and the tracebacks of the saves that failed
    because the sweep stopped waiting for the object store; any other error still shows."""
    from botocore.exceptions import ConnectionError as BotoConnectionError

    from satune.sweep.patient_s3 import GaveUp

    def failed(exc: BaseException, wrapped: bool = False):
        try:
            try:
                raise exc
            except BaseException as inner:
                if wrapped:
                    raise OSError("pyarrow's wrapper") from inner
                raise
        except BaseException:
            logging.getLogger("ray.tune.execution.experiment_state").error("Saving ... failed", exc_info=True)

    with caplog.at_level(logging.INFO), _tune_quieted():
        logging.getLogger("ray.tune.tune").warning("Experiment has been interrupted, but ... Tuner.restore(...)")
        failed(GaveUp(error="the sweep stopped waiting"))
        failed(GaveUp(error="the sweep stopped waiting"), wrapped=True)
        failed(BotoConnectionError(error="refused"))
        logging.getLogger("ray.tune.tune").warning("Stop signal received")
    assert [r.getMessage() for r in caplog.records] == ["Saving ... failed", "Stop signal received"]
    assert "refused" in caplog.text
    logging.getLogger("ray.tune.tune").warning("Experiment has been interrupted")  # outside the block: shown
    assert caplog.records[-1].getMessage() == "Experiment has been interrupted"


def test_a_failed_upload_the_syncer_reports_as_text_is_dropped_once_the_sweep_gave_up(caplog):
    """Tune's syncer logs a failed upload when it launches the next one, with the traceback in the
    message rather than as exc_info (CI: it reached the outage test's output under load)."""
    text = "Last sync command failed with the following error:\nTraceback ...\nsatune.sweep.patient_s3.GaveUp: An HTTP"
    with caplog.at_level(logging.INFO), _tune_quieted():
        logging.getLogger("ray.train._internal.syncer").error(text)
        logging.getLogger("ray.train._internal.syncer").error("Last sync command failed: refused")
    assert [r.getMessage() for r in caplog.records] == ["Last sync command failed: refused"]
