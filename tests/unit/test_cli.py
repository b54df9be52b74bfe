import json
import shutil
import subprocess
import sys
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
    assert set(data) == {"spec", "effective", "metrics", "history", "integrity"}
    assert data["spec"]["method"]["w_A"] == 3 and data["spec"]["train"]["epochs"] == 1
    # what ran, defaults resolved: smoke.yaml leaves w_B and the PGD steps unset
    assert data["effective"]["method.w_A"] == 3 and data["effective"]["method.w_B"] == 1.0
    assert data["effective"]["threat.step_size"] == 0.1 / 4 and data["effective"]["eval.pgd_step_size"] == 2.5 * 0.1 / 5
    assert {"eval/clean_acc", "eval/pgd_acc", "proxy/pgd_acc", "last/pgd_acc", "train/grad_evals"} <= set(
        data["metrics"]
    )
    assert {"select/pgd_acc", "time/epoch_s"} <= set(data["history"][-1]) and not {"select/pgd_acc"} & set(
        data["metrics"]
    )
    assert data["integrity"] == [] and (out / "outcomes.csv").read_text().startswith("index,label,clean,pgd\n")
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
        .replace("{dataset: digits,", f"{{dataset: cifar10, root: {tmp_path},")
    )
    sweep.write_text(text)
    result = runner.invoke(app, ["run", str(sweep), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "trial.data.root: cannot read cifar10" in result.stderr
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


def test_validate_and_dry_run_import_neither_torch_nor_ray():
    """Checking a file or printing a plan costs what parsing YAML costs: no torch, no Ray, no MLflow."""
    code = (
        "import sys; from satune.cli import main; sys.argv = ['satune'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'optuna') if m in sys.modules))"
    )
    sweeps = sorted(str(p) for p in (ROOT / "sweeps").glob("*.yaml"))
    for args in (["validate", *sweeps], ["sweep", str(ROOT / "sweeps" / "wA.yaml"), "--dry-run"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
        assert proc.stdout.strip().splitlines()[-2:] == ["exit 0", "[]"], (args[0], proc.stdout, proc.stderr)


def test_switching_the_method_kind_says_how(tmp_path):
    result = runner.invoke(
        app, ["run", str(ROOT / "sweeps" / "smoke.yaml"), "--set", "method.kind=at", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --set method.kind=at: the base method's split, ranking, fraction, w_A belong to sat, not at: "
        "set the whole method instead, e.g. --set 'method={kind: at}'"
    )
    assert not list(tmp_path.iterdir())


def test_reading_a_local_mode_sweep_that_never_ran_says_how_in_one_line(tmp_path):
    sweep = tmp_path / "smoke.yaml"
    sweep.write_text((ROOT / "sweeps" / "smoke.yaml").read_text())
    for command in (["report", str(sweep)], ["ui", str(sweep)], ["eval", str(sweep)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        lines = [x for x in result.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, lines)
        assert "run `satune sweep" in lines[0], (command, lines)
