"""Configurations compared over seeds, on a real sweep (real Ray, a real MLflow server): the select
slice chooses the best configuration and the final stage's winners; the end table, verdicts.json,
the parent run, the report and the Python API hold the same verdicts, recounted here from what the
trials logged."""

import csv
import io
import json
import math

import pytest
from conftest import run_dir_of, satune, smoke_file
from scipy.stats import ttest_rel
from test_sweep import runs_of

import satune as sat
from satune.tracking import TRIAL_TAG

pytestmark = pytest.mark.integration

FRACTIONS = [0.2, 0.5, 0.8]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, mlflow_server, ray_address):
    """Three attacked fractions × three seeds; AutoAttack on the two best configurations."""
    tmp_path = tmp_path_factory.mktemp("verdicts")
    name = "verdicts"
    sweep = smoke_file(
        tmp_path,
        name,
        mlflow_server,
        **{
            "trial.data": {"dataset": "digits", "val_fraction": 0.3, "select_fraction": 0.3},
            "search": {"grid": {"method.fraction": FRACTIONS}, "repeats": 3},
            "final_eval": {
                "top_k": 2,
                "autoattack": {"version": "custom", "attacks": ["apgd-ce"], "n": 60},
                "resources": {"cpu": 1},
            },
        },
    )
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    client, (parent,), children = runs_of(mlflow_server, name)
    by_config: dict[str, list] = {}
    for c in sorted(children, key=lambda c: int(c.data.tags["satune.repeat"])):
        by_config.setdefault(c.data.tags["satune.config"], []).append(c)
    return tmp_path, sweep, done, client, parent, by_config


def mean(runs, metric: str) -> float:
    return sum(r.data.metrics[metric] for r in runs) / len(runs)


def test_the_select_slice_chooses_the_best_configuration_and_the_final_stages_winners(swept):
    _, _, done, _, parent, by_config = swept
    means = {k: mean(runs, "proxy/pgd_acc") for k, runs in by_config.items()}
    (best,) = [
        k for k, runs in by_config.items() if runs[0].data.tags[TRIAL_TAG] == parent.data.tags["satune.best_trial"]
    ]
    assert means[best] == max(means.values())  # (a tie on the select slice may go either way)
    evaluated = {k for k, runs in by_config.items() if all("final/aa_acc" in r.data.metrics for r in runs)}
    (rest,) = set(by_config) - evaluated  # top_k 2 by the select slice, every repeat of each
    assert len(evaluated) == 2 and min(means[k] for k in evaluated) >= means[rest]
    assert not any("final/aa_acc" in r.data.metrics for r in by_config[rest])
    assert (
        parent.data.tags["satune.selection"] == "proxy/pgd_acc on the select slice, 162 examples (mean over 3 repeats)"
    )
    assert f"best configuration {best}" in done.stdout and "chosen by proxy/pgd_acc on the select slice" in done.stdout


def test_every_place_holds_the_same_verdicts_recounted_from_the_trials(swept):
    tmp_path, sweep, done, client, parent, by_config = swept
    written = json.loads((run_dir_of(tmp_path, "verdicts") / "verdicts.json").read_text())
    best = written["best"]
    assert written["note"] is None and len(written["verdicts"]) == 2
    logged = json.loads(open(client.download_artifacts(parent.info.run_id, "verdicts.json", str(tmp_path))).read())
    assert logged == written
    api = sat.load(sweep).verdicts()
    report = {
        r["other"]: r
        for r in csv.DictReader(open(run_dir_of(tmp_path, "verdicts") / "report" / "paired_comparison.csv"))
    }
    for v, row in zip(written["verdicts"], api.to_dict("records"), strict=True):
        other, metric = v["other"], v["metric"]
        # The paired t-test over the three seeds, recomputed from the runs' own numbers.
        mine = [r.data.metrics[metric] for r in by_config[best]]
        theirs = [r.data.metrics[metric] for r in by_config[other]]
        ref = ttest_rel(mine, theirs)
        assert metric == ("final/aa_acc" if "final/aa_acc" in by_config[other][0].data.metrics else "eval/pgd_acc")
        assert v["mean_diff"] == pytest.approx(sum(mine) / 3 - sum(theirs) / 3)
        assert v["p_seeds"] == pytest.approx(ref.pvalue) and [v["diff_lo"], v["diff_hi"]] == pytest.approx(
            list(ref.confidence_interval(0.95))
        )
        # The per-example test, pooled over the seeds' pairs, recounted from the outcome files.
        n = b = c = 0
        for x, y in zip(by_config[best], by_config[other], strict=True):
            a, o = (outcomes(client, r.info.run_id, metric, tmp_path) for r in (x, y))
            pairs = [(p, q) for p, q in zip(a, o, strict=True) if p and q]
            n, b, c = n + len(pairs), b + pairs.count(("1", "0")), c + pairs.count(("0", "1"))
        assert (v["examples"], v["best_only"], v["other_only"]) == (n, b, c)
        exact = min(1.0, 2 * sum(math.comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c)) if b + c else 1.0
        assert v["p_examples"] == pytest.approx(exact)
        supported = v["p_seeds"] < 0.05 or v["p_examples"] < 0.05
        assert (v["verdict"] == "within noise") == (not supported)
        # The same numbers everywhere: the API, the report, the parent run, the end table.
        assert {k: row[k] for k in ("other", "metric", "mean_diff", "p_seeds", "p_examples", "verdict")} == {
            k: v[k] for k in ("other", "metric", "mean_diff", "p_seeds", "p_examples", "verdict")
        }
        assert float(report[other]["mean_diff"]) == pytest.approx(v["mean_diff"])
        assert report[other]["verdict"] == v["verdict"]
        assert parent.data.metrics[f"verdict/{other}/diff"] == pytest.approx(v["mean_diff"])
        assert parent.data.metrics[f"verdict/{other}/p_seeds"] == pytest.approx(v["p_seeds"])
        assert parent.data.tags[f"satune.verdict.{other}"].startswith(v["verdict"])
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith(f"│ {other}") and metric in ln)
        assert f"{v['mean_diff']:+.4f}" in line and v["verdict"].split(",")[0] in line  # the end table's verdicts


def test_the_api_lists_the_trials_as_mlflow_holds_them(swept):
    _, sweep, _, _, parent, by_config = swept
    loaded = sat.load(sweep)
    assert loaded.parent_run_id == parent.info.run_id
    trials = loaded.trials().set_index("trial")
    runs = {r.data.tags[TRIAL_TAG]: r for rs in by_config.values() for r in rs}
    assert sorted(trials.index) == sorted(runs)
    for trial, r in runs.items():
        row = trials.loc[trial]
        assert row["config"] == r.data.tags["satune.config"] and row["repeat"] == int(r.data.tags["satune.repeat"])
        assert row["proxy/pgd_acc"] == r.data.metrics["proxy/pgd_acc"] and row["proxy/pgd_n"] == 162
        assert row["method.fraction"] == float(r.data.params["method.fraction"])
    assert trials.loc[parent.data.tags["satune.best_trial"], "best"] and trials["best"].sum() == 3
    # Any two configurations compare as the verdicts compare the best with the others.
    verdict = loaded.verdicts().iloc[0]
    fraction = {c.config["method.fraction"] for c in [loaded.comparison.best]}.pop()
    again = loaded.compare({"method.fraction": fraction}, {"method.fraction": verdict["other.method.fraction"]})
    assert {k: again[k] for k in ("metric", "mean_diff", "p_seeds", "p_examples")} == {
        k: verdict[k] for k in ("metric", "mean_diff", "p_seeds", "p_examples")
    }
    assert again["verdict"] == verdict["verdict"].replace("best", "first", 1)  # (any two: "first ahead", ...)
    pgd = loaded.compare(
        {"method.fraction": fraction}, {"method.fraction": verdict["other.method.fraction"]}, metric="eval/pgd_acc"
    )  # outcome files the verdicts did not need, read now
    assert pgd["metric"] == "eval/pgd_acc" and pgd["examples"] == 3 * 377 and pgd["p_examples"] is not None
    by_name = sat.load("verdicts", tracking_uri=loaded.tracking_uri)  # by name, and by the parent run's id
    by_id = sat.load(parent.info.run_id, tracking_uri=loaded.tracking_uri)
    assert by_name.verdicts().to_dict("records") == loaded.verdicts().to_dict("records")
    assert by_id.parent_run_id == parent.info.run_id


def outcomes(client, run_id: str, metric: str, tmp_path) -> list[str]:
    if metric.startswith("final/"):
        (label,) = client.list_artifacts(run_id, "final")
        name, column = f"{label.path}/outcomes.csv", "aa"
    else:
        name, column = "outcomes.csv", "pgd"
    path = client.download_artifacts(run_id, name, str(tmp_path / run_id / metric.replace("/", "_")))
    return [r[column] for r in csv.DictReader(io.StringIO(open(path).read()))]
