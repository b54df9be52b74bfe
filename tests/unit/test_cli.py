import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from satune.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_run_writes_the_result_file(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "run",
            str(ROOT / "sweeps" / "smoke.yaml"),
            "--out",
            str(out),
            "--set",
            "train.epochs=1",
            "--set",
            "method.w_A=3",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "result.json").read_text())
    assert set(data) == {"spec", "metrics", "history"}
    assert data["spec"]["method"]["w_A"] == 3 and data["spec"]["train"]["epochs"] == 1
    assert {"eval/clean_acc", "eval/pgd_acc", "train/grad_evals", "time/epoch_s"} <= set(data["metrics"])
    assert (out / "checkpoint" / "state.pt").exists()


def test_run_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "out"
    args = ["run", str(ROOT / "sweeps" / "smoke.yaml"), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    first = json.loads((out / "result.json").read_text())
    assert runner.invoke(app, args + ["--resume"]).exit_code == 0  # all epochs done: evaluates again
    again = json.loads((out / "result.json").read_text())
    assert first["history"] == again["history"]
    assert first["metrics"]["eval/pgd_acc"] == again["metrics"]["eval/pgd_acc"]


def test_bad_override_exits_2_with_the_path(tmp_path):
    result = runner.invoke(
        app, ["run", str(ROOT / "sweeps" / "smoke.yaml"), "--set", "method.fraction=1.5", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "trial.method.fraction: must be in (0, 1], got 1.5" in result.stderr
    result = runner.invoke(
        app, ["run", str(ROOT / "sweeps" / "smoke.yaml"), "--resume", "--out", str(tmp_path / "none")]
    )
    assert result.exit_code == 2 and "no checkpoint" in result.stderr


def test_missing_dataset_files_exit_2(tmp_path):
    sweep = tmp_path / "c.yaml"
    text = (
        (ROOT / "sweeps" / "smoke.yaml")
        .read_text()
        .replace("{dataset: digits}", f"{{dataset: cifar10, root: {tmp_path}}}")
    )
    sweep.write_text(text)
    result = runner.invoke(app, ["run", str(sweep), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "trial.data.root: cannot read cifar10" in result.stderr
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
