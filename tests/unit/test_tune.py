"""The sweep driver's own logic, without starting Ray: plans, resume checks, best trials, seeds."""

import json

import pytest

from satune.specs import parse_sweep
from satune.tune.driver import (
    STATE_FILE,
    SweepError,
    TrialRow,
    best_of,
    pareto_front,
    plan_lines,
    prepare,
    reproduce_command,
)
from satune.tune.space import REPEAT_KEY, optuna_space
from satune.tune.trainable import TrialContext, resolve_trial


def sweep(tmp_path, **over):
    data = {
        "name": "t", "storage": str(tmp_path / "runs"),
        "trial": {"data": {"dataset": "digits"}, "threat": {"norm": "linf", "eps": 0.1},
                  "method": {"kind": "sat", "fraction": 0.5}},
        "search": {"space": {"method.w_A": {"loguniform": [0.5, 4]}, "train.epochs": {"int": [1, 3]}}},
    }  # fmt: skip
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
    assert (
        line
        == f'satune run {tmp_path / "s.yaml"} --set method.split="class" --set method.w_A=2.5 --set seed=42 --set runtime.threads=1'
    )


def test_trial_seeds(tmp_path):
    spec = sweep(tmp_path)
    ctx = TrialContext(base=spec.trial.model_dump(mode="json", exclude_unset=True), sweep_seed=3, tracking_uri="",
                       experiment_id="", parent_run_id="", threads=2)  # fmt: skip
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
    assert "8 trials of sat on digits" in text and "search method.w_A: loguniform" in text


def test_resume_refuses_what_cannot_resume(tmp_path):
    spec = sweep(tmp_path)
    source = tmp_path / "s.yaml"
    source.write_text("name: t\n")
    with pytest.raises(SweepError, match="no earlier run"):
        prepare(spec, source, resume=True)
    run_dir, state = prepare(spec, source, resume=False)
    assert not run_dir.exists()  # nothing is written before MLflow answered
    run_dir.mkdir(parents=True)
    (run_dir / STATE_FILE).write_text(json.dumps(state))
    assert prepare(sweep(tmp_path, resources={"max_concurrent": 1}), source, resume=True)[0] == run_dir
    with pytest.raises(SweepError, match="changed in search"):
        prepare(sweep(tmp_path, search={"num_samples": 3}), source, resume=True)
    (run_dir / STATE_FILE).write_text(json.dumps({**state, "status": "finished"}))
    with pytest.raises(SweepError, match="nothing to resume"):
        prepare(spec, source, resume=True)
