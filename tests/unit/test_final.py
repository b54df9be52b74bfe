"""`satune eval` on a `satune run` folder: AutoAttack later, on as many final-slice examples as asked,
written beside the run with n, intervals, outcomes and a card."""

import json
from pathlib import Path

from typer.testing import CliRunner

from satune.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_eval_of_a_run_folder(tmp_path):
    out = tmp_path / "run"
    done = runner.invoke(
        app, ["run", str(ROOT / "sweeps" / "smoke.yaml"), "--set", "train.epochs=1", "--out", str(out)]
    )
    assert done.exit_code == 0, done.output
    evaluated = runner.invoke(app, ["eval", str(out), "--attack", "apgd-ce", "--n", "40", "--seed", "3"])
    assert evaluated.exit_code == 0, evaluated.output
    (folder,) = (out / "final").iterdir()
    assert folder.name == "0-custom-n40"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["final/aa_n"] == metrics["final/clean_n"] == 40
    assert metrics["final/aa_acc_lo"] <= metrics["final/aa_acc"] <= metrics["final/aa_acc_hi"]
    trial = json.loads((out / "result.json").read_text())["metrics"]
    assert metrics["final/pgd_gap"] == trial["eval/pgd_acc"] - metrics["final/aa_acc"]
    card = json.loads((folder / "card.json").read_text())
    assert card["autoattack"] == {
        "version": "custom",
        "attacks": ["apgd-ce"],
        "seed": 3,
        "package": "pyautoattack==0.2.0",
    }
    assert (card["threat_model"], card["eps"], card["n_examples"]) == ("Linf", 0.1, 40)
    assert card["integrity"] == "all checks passed" and card["extra_data"] == []
    assert len((folder / "outcomes.csv").read_text().splitlines()) == 41
    again = runner.invoke(app, ["eval", str(out), "--n", "20", "--version", "custom", "--attack", "apgd-ce"])
    assert again.exit_code == 0 and (out / "final" / "1-custom-n20" / "card.md").exists()  # a later one beside


def test_eval_options_are_validated(tmp_path):
    bad = runner.invoke(app, ["eval", str(tmp_path), "--n", "-3", "--norm", "l3"])
    assert bad.exit_code == 2
    assert bad.stderr.splitlines() == [
        "error: --n: must be >= 0, got -3",
        "error: --norm: must be one of 'l2' or 'linf', got 'l3'",
    ]
