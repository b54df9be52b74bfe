import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from satune.cli import app
from satune.specs import (
    SpecError,
    SweepSpec,
    TrialSpec,
    apply_overrides,
    load_sweep,
    parse_sweep,
    parse_trial,
    reported_metrics,
)

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
BROKEN = sorted((Path(__file__).parent / "broken_sweeps").glob("*.yaml"))
runner = CliRunner()


def base_trial(**method):
    return {
        "data": {"dataset": "digits"},
        "threat": {"norm": "linf", "eps": 0.1},
        "method": method or {"kind": "at"},
    }


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_sweep_file_validates(path):
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert isinstance(load_sweep(path), SweepSpec)


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.name)
def test_broken_file_exits_2_with_one_short_line_naming_the_path(path, monkeypatch):
    """The corpus: every malformed or hostile form is refused at once, in one bounded line."""
    monkeypatch.chdir(path.parent)  # relative paths in the corpus (storage_is_a_file.yaml) name its files
    expected = path.read_text().splitlines()[0].removeprefix("# error: ")
    start = time.monotonic()
    result = runner.invoke(app, ["validate", str(path)])
    took = time.monotonic() - start
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: {expected}"), lines[0]
    assert len(result.output) <= 400, len(result.output)
    assert "Traceback" not in result.output
    assert took < 5, f"{took:.1f}s"  # a guard against exponential blow-ups, not a benchmark


def test_a_password_in_the_tracking_uri_is_never_echoed():
    result = runner.invoke(
        app, ["validate", str(Path(__file__).parent / "broken_sweeps" / "tracking_credentials.yaml")]
    )
    assert result.exit_code == 2 and "s3cret" not in result.output and "alice" not in result.output


def test_many_problems_are_capped():
    data = {"name": "x", "trial": base_trial(), **{f"key{i}": i for i in range(50)}}
    with pytest.raises(SpecError) as exc:
        parse_sweep(data)
    lines = str(exc.value).splitlines()
    assert len(lines) == SpecError.MAX_PROBLEMS + 1 and lines[-1] == "... and 30 more problems"


def test_home_in_paths_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    sweep = tmp_path / "s.yaml"
    trial = base_trial()
    trial["data"] = {"dataset": "cifar10", "root": "~/data"}
    trial["runtime"] = {"cache_dir": "~/cache"}
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "h",
                "storage": "~/runs",
                "trial": trial,
                "search": {"space": {"data.root": {"choice": ["~/a", "b"]}}},
            }
        )
    )
    spec = load_sweep(sweep, base_dir=tmp_path / "elsewhere")
    assert spec.storage == str(tmp_path / "runs")
    assert spec.trial.data.root == str(tmp_path / "data")
    assert spec.trial.runtime.cache_dir == str(tmp_path / "cache")
    assert spec.search.space["data.root"].value == [str(tmp_path / "a"), str(tmp_path / "elsewhere" / "b")]


def test_cli_user_mistakes_never_show_a_traceback(tmp_path):
    """A real process: missing file, a directory, and binary junk each exit 2 with one line."""
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"\xff\xfe\x00\x01")
    for target in (tmp_path / "missing.yaml", tmp_path, junk):
        proc = subprocess.run(
            [sys.executable, "-m", "satune.cli", "validate", str(target)], capture_output=True, text=True
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_every_problem_is_reported_at_once():
    data = {"name": "x", "trial": base_trial(kind="sat", fraction=2, w_A=-1)}
    data["trial"]["train"] = {"epochs": 0}
    with pytest.raises(SpecError) as exc:
        parse_sweep(data)
    text = str(exc.value)
    assert "trial.method.fraction: must be in (0, 1], got 2" in text
    assert "trial.method.w_A: must be > 0, got -1" in text
    assert "trial.train.epochs: must be >= 1, got 0" in text


def test_specs_never_import_torch_ray_or_mlflow():
    code = "import sys, satune.specs; print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_budgets_may_be_written_as_fractions():
    spec = parse_trial({**base_trial(), "threat": {"norm": "linf", "eps": "8/255"}})
    assert spec.threat.eps == pytest.approx(8 / 255)
    assert spec.threat.alpha == pytest.approx(2 / 255)  # default step eps/4


def test_sweep_seed_flows_into_the_base_trial_unless_set():
    assert parse_sweep({"name": "x", "seed": 7, "trial": base_trial()}).trial.seed == 7
    assert parse_sweep({"name": "x", "seed": 7, "trial": {**base_trial(), "seed": 3}}).trial.seed == 3


def test_weighting_is_custom_when_weights_are_given():
    assert parse_trial(base_trial(kind="sat", fraction=0.3)).method.resolved_weighting == "vanilla"
    assert parse_trial(base_trial(kind="sat", fraction=0.3, w_A=2)).method.resolved_weighting == "custom"


def test_class_split_takes_fraction_or_classes_not_both():
    with pytest.raises(SpecError, match="exactly one of fraction or classes"):
        parse_trial(base_trial(kind="sat", split="class", fraction=0.3, classes=["1"]))
    spec = parse_trial(base_trial(kind="sat", split="class", classes=[3, 5]))
    assert spec.method.classes == ["3", "5"]  # YAML integers name digit classes


def test_search_values_are_validated_against_their_field():
    data = {"name": "x", "trial": base_trial(kind="sat", fraction=0.3), "search": {"space": {}}}
    data["search"]["space"] = {"method.fraction": {"choice": [0.2, 1.2]}}
    with pytest.raises(SpecError, match=r"value 1.2 of the choice is invalid for trial.method.fraction"):
        parse_sweep(data)
    data["search"]["space"] = {"method.fraction": {"uniform": [0.1, 1.0]}, "train.epochs": {"int": [1, 3]}}
    assert parse_sweep(data).search.space["train.epochs"].kind == "int"


def test_search_key_must_fit_the_trials_method_kind():
    data = {"name": "x", "trial": base_trial(kind="at"), "search": {"space": {"method.w_A": {"uniform": [1, 2]}}}}
    with pytest.raises(SpecError, match="'method.w_A' is not a field of the trial"):
        parse_sweep(data)


def test_overrides_are_validated_like_the_file():
    trial = base_trial(kind="sat", fraction=0.3)
    merged = apply_overrides(trial, ["method.w_A=2.5", "train.epochs=3", "seed=4"])
    spec = parse_trial(merged)
    assert (spec.method.w_A, spec.train.epochs, spec.seed) == (2.5, 3, 4)
    with pytest.raises(SpecError, match=r"trial.method.w_A: must be > 0, got -1"):
        parse_trial(apply_overrides(trial, ["method.w_A=-1"]))
    with pytest.raises(SpecError, match=r"--set method.wA=1: 'method.wA' is not a field"):
        apply_overrides(trial, ["method.wA=1"])


def test_reported_metrics_follow_the_trial():
    csat = parse_trial(base_trial(kind="sat", split="class", classes=["1"]))
    esat = parse_trial(base_trial(kind="sat", fraction=0.5))
    assert {"eval/aa_acc_A", "eval/pgd_acc_B", "eval/class_aa_acc/9"} <= reported_metrics(csat)
    assert "eval/aa_acc_A" not in reported_metrics(esat)
    no_aa = parse_trial({**base_trial(), "eval": {"autoattack": {"n": 0}}})
    assert "eval/aa_acc" not in reported_metrics(no_aa)


def test_resolved_spec_round_trips_through_json():
    spec = load_sweep(ROOT / "sweeps" / "wA.yaml")
    again = SweepSpec.model_validate_json(spec.model_dump_json(by_alias=True))
    assert again == spec
    assert TrialSpec.model_validate(spec.trial.model_dump()) == spec.trial


def test_relative_paths_become_absolute(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "x", "trial": base_trial(), "storage": "out"}))
    spec = load_sweep(f, base_dir=tmp_path)
    assert spec.storage == str(tmp_path / "out")


def test_the_evaluation_threat_may_differ_from_training():
    trial = parse_trial(
        {
            "data": {"dataset": "digits"},
            "threat": {"norm": "linf", "eps": 0.031, "step_size": 0.007},
            "method": {"kind": "trades"},
            "eval": {"eps": "8/255"},
        }
    )
    assert trial.threat.eps == 0.031 and trial.eval_threat.eps == 8 / 255 and trial.eval_threat.norm == "linf"
    assert trial.eval_threat.alpha == 8 / 255 / 4  # its own step, not training's 0.007
    plain = parse_trial({"data": {"dataset": "digits"}, "threat": {"norm": "l2", "eps": 0.5}, "method": {"kind": "at"}})
    assert plain.eval_threat is plain.threat


def test_rules_about_ignored_fields_hold_for_specs_written_out_whole():
    with pytest.raises(SpecError, match="unused when classes are listed"):
        parse_trial(base_trial(kind="sat", split="class", classes=[3], ranking="random"))
    with pytest.raises(SpecError, match="fgsm_rs takes exactly one step"):
        parse_trial({**base_trial(), "threat": {"norm": "linf", "eps": 0.1, "attack": "fgsm_rs", "steps": 3}})
    whole = parse_trial(
        {
            **base_trial(kind="sat", split="class", classes=[3]),
            "threat": {"norm": "linf", "eps": 0.1, "attack": "fgsm_rs"},
        }
    )
    assert parse_trial(whole.model_dump(mode="json")) == whole  # defaults written out are not "set" mistakes


def test_the_search_chooses_on_the_select_slice_unless_a_paper_is_reproduced_on_purpose():
    assert parse_sweep({"name": "x", "trial": base_trial()}).search.metric == "proxy/pgd_acc"
    with pytest.raises(SpecError, match="rank on proxy/clean_acc \\(select slice\\)"):
        parse_sweep({"name": "x", "trial": base_trial(), "search": {"metric": "eval/clean_acc"}})
    split = base_trial(kind="sat", split="class", classes=[3])
    assert parse_sweep({"name": "x", "trial": split, "search": {"metric": "proxy/pgd_acc_B"}})  # CSAT's B, on select
    optimistic = parse_sweep(
        {"name": "x", "trial": base_trial(), "search": {"metric": "eval/pgd_acc", "select_on": "final"}}
    )
    assert optimistic.search.select_on == "final"
