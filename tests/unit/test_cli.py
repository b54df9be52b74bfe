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


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    args = ["run", str(ROOT / "sweeps" / "smoke.yaml"), "--set", "train.epochs=3"]
    whole = runner.invoke(app, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output

    def interrupt_after_first_epoch(epochs):
        def on_epoch(metrics, checkpoint):
            if metrics["epoch"] == 0:
                raise KeyboardInterrupt  # Ctrl-C, once epoch 0's checkpoint is on disk

        return on_epoch

    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        m.setattr("satune.cli._progress", interrupt_after_first_epoch)
        cut = runner.invoke(app, [*args, "--out", str(out)])
    assert cut.exit_code == 130 and "--resume" in cut.stderr and not (out / "result.json").exists()
    assert runner.invoke(app, [*args, "--out", str(out), "--resume"]).exit_code == 0

    def timeless(result):
        drop = lambda d: {k: v for k, v in d.items() if not k.startswith("time/")}  # noqa: E731
        return {**result, "metrics": drop(result["metrics"]), "history": [drop(h) for h in result["history"]]}

    expected = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert timeless(json.loads((out / "result.json").read_text())) == timeless(expected)


def test_run_never_overwrites_an_earlier_run(tmp_path):
    out = tmp_path / "out"
    args = ["run", str(ROOT / "sweeps" / "smoke.yaml"), "--set", "train.epochs=1", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = (out / "checkpoint" / "state.pt").read_bytes(), (out / "result.json").read_text()
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert (
        again.stderr.strip()
        == f"error: --out {out} holds an earlier run: continue it with --resume, or choose another --out"
    )
    assert ((out / "checkpoint" / "state.pt").read_bytes(), (out / "result.json").read_text()) == before


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
