"""`satune report` on a real sweep (real Ray, a real MLflow server): every figure and table checked
against what MLflow holds, and the page opened in headless Chromium as a user opens it."""

import csv
import io
import math
import statistics

import pytest
from conftest import satune, screenshot, smoke_file
from PIL import Image
from test_sweep import runs_of

from satune.tracking import TRIAL_TAG

pytestmark = pytest.mark.integration

EXPECTED = {  # what a grid over the fraction × Optuna over w_A, with a final stage, must show
    "objective_vs_method_w_A",
    "objective_vs_method_fraction",
    "fraction_curves",
    "pareto",
    "optuna_history",
    "learning_curves",
    "paired_comparison",
}


def read_csv(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def swept(tmp_path_factory, mlflow_server, ray_address):
    """A 4-trial sweep (2 fractions × 2 values of w_A) whose two best get a final AutoAttack stage;
    `satune sweep` draws the report at its end."""
    tmp_path = tmp_path_factory.mktemp("report")
    name = "report"
    sweep = smoke_file(
        tmp_path,
        name,
        mlflow_server,
        **{
            "search": {
                "algorithm": "tpe",
                "num_samples": 2,
                "metric": "proxy/pgd_acc",
                "grid": {"method.fraction": [0.3, 0.7]},
                "space": {"method.w_A": {"loguniform": [0.5, 4]}},
            },
            "final_eval": {
                "top_k": 2,
                "autoattack": {"version": "custom", "attacks": ["apgd-ce"], "n": 60},
                "resources": {"cpu": 1},
            },
        },
    )
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    client, (parent,), runs = runs_of(mlflow_server, name)
    children = {r.data.tags[TRIAL_TAG]: r for r in runs}
    return tmp_path, sweep, done, client, parent, children


def test_the_sweep_draws_its_report_and_logs_it_into_the_parent_run(swept):
    tmp_path, _, done, client, parent, _ = swept
    (index,) = tmp_path.glob("runs/report/*/report/index.html")
    assert f"report: {index.as_uri()}" in done.stdout
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    on_disk = {f"report/{p.name}" for p in index.parent.iterdir()}
    assert logged == on_disk and "report/index.html" in logged
    assert {f"report/{n}.png" for n in EXPECTED} <= logged and {f"report/{n}.csv" for n in EXPECTED} <= logged
    for name in EXPECTED:  # real images of a readable size, not empty canvases
        with Image.open(index.parent / f"{name}.png") as image:
            assert image.width >= 400 and image.height >= 250
            assert len(set(image.convert("L").getdata())) > 20, f"{name}.png looks blank"


def test_figures_hold_what_mlflow_holds(swept):
    tmp_path, sweep, _, client, parent, children = swept
    out = tmp_path / "again"
    again = satune("report", "report", "--tracking-uri", client.tracking_uri, "--out", out, "--no-log")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {p.stem for p in out.glob("*.png")} == EXPECTED  # nothing drawn empty; this sweep has no BiaMAT, no matrix

    points = read_csv(out / "objective_vs_method_w_A.csv")
    for row in points:
        run = children[row["trial"]]
        assert float(row["method.w_A"]) == pytest.approx(float(run.data.params["method.w_A"]))
        assert float(row["value"]) == run.data.metrics[row["metric"]]
        assert float(row["lo95"]) == run.data.metrics[row["metric"] + "_lo"]
    assert {(r["trial"], r["metric"]) for r in points} == {
        (t, m)
        for t, r in children.items()
        for m in ("eval/clean_acc", "eval/pgd_acc", "final/aa_acc")
        if m in r.data.metrics
    }

    # The fraction curves: mean and std over the trials of each fraction, of the strongest attack all have.
    for row in read_csv(out / "fraction_curves.csv"):
        values = [
            r.data.metrics[row["metric"]]
            for r in children.values()
            if float(r.data.params["method.fraction"]) == float(row["fraction"])
        ]
        assert row["metric"] in ("eval/clean_acc", "eval/pgd_acc") and int(row["n"]) == len(values) == 2
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values))
        assert float(row["std"]) == pytest.approx(statistics.stdev(values))

    # The Pareto front: a trial is on it exactly when no other is at least as good in both and better in one.
    for row in read_csv(out / "pareto.csv"):
        robust, other = row["panel"].split(" vs ")
        sign = -1 if other == "train/grad_evals" else 1
        me = children[row["trial"]].data.metrics
        dominated = any(
            m[robust] >= me[robust]
            and sign * m[other] >= sign * me[other]
            and (m[robust], m[other]) != (me[robust], me[other])
            for m in (r.data.metrics for r in children.values())
        )
        assert row["pareto"] == str(not dominated), row

    # Learning curves: the per-epoch history MLflow has, of the best trials by the objective.
    curves = [r for r in read_csv(out / "learning_curves.csv") if r["metric"].startswith("select/")]
    proxy = {t: r.data.metrics["proxy/pgd_acc"] for t, r in children.items()}
    drawn = {r["trial"] for r in curves}
    assert len(drawn) == 3 and min(proxy[t] for t in drawn) >= max(proxy[t] for t in set(children) - drawn)
    for r in curves:
        history = client.get_metric_history(children[r["trial"]].info.run_id, r["metric"])
        assert float(r["value"]) == {m.step + 1: m.value for m in history}[int(r["epoch"])]

    # Optuna's history: the values it was told are the trials' objective.
    told = sorted(float(r["proxy/pgd_acc"]) for r in read_csv(out / "optuna_history.csv"))
    assert told == pytest.approx(sorted(r.data.metrics["proxy/pgd_acc"] for r in children.values()))

    # The best trial (chosen on the select slice) against each other, recounted from the outcomes: on the
    # final stage's AutoAttack where both have it (the two winners), else on the trials' own PGD.
    winner = parent.data.tags["satune.best_trial"]
    assert proxy[winner] == max(proxy.values())  # (a tie on the select slice may go either way)
    by_config = {r.data.tags["satune.config"]: t for t, r in children.items()}
    rows = read_csv(out / "paired_comparison.csv")
    others = [by_config[r["other"]] for r in rows]
    assert sorted(others) == sorted(set(children) - {winner})
    proxies = [children[t].data.metrics["proxy/pgd_acc"] for t in others]
    assert proxies == sorted(proxies, reverse=True)  # the closest on the select slice first
    for row in rows:
        best, other = children[winner], children[by_config[row["other"]]]
        final = row["metric"] == "final/aa_acc"
        assert final == ("final/aa_acc" in other.data.metrics) and row["verdict"] in (
            "within noise",
            "best ahead on these examples only",
            "best behind on these examples only",
        )
        a, b = ((final_outcomes if final else trial_outcomes)(client, r.info.run_id, tmp_path) for r in (best, other))
        column = "aa" if final else "pgd"
        pairs = [(x[column], y[column]) for x, y in zip(a, b, strict=True) if x[column] and y[column]]
        best_only, other_only = pairs.count(("1", "0")), pairs.count(("0", "1"))
        assert (int(row["best_only"]), int(row["other_only"]), int(row["examples"])) == (
            best_only,
            other_only,
            len(pairs),
        )
        assert len(pairs) == (60 if final else int(best.data.metrics["eval/pgd_n"]))  # AutoAttack: the first 60
        n = best_only + other_only
        p = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(best_only, other_only) + 1)) / 2**n) if n else 1.0
        assert float(row["p_examples"]) == pytest.approx(p)
        metric = row["metric"]
        assert float(row["mean_diff"]) == pytest.approx(best.data.metrics[metric] - other.data.metrics[metric])
        assert row["p_seeds"] == ""  # one seed per configuration: no test over seeds

    # One card per finally evaluated trial, with its AutoAttack number; one trials row per run.
    cards = read_csv(out / "cards.csv")
    assert sorted(c["trial"] for c in cards) == sorted(
        t for t, r in children.items() if "final/aa_acc" in r.data.metrics
    )
    for c in cards:
        assert float(c["autoattack_acc"]) == children[c["trial"]].data.metrics["final/aa_acc"]
    assert sorted(r["trial"] for r in read_csv(out / "trials.csv")) == sorted(children)
    assert "logging" not in again.stderr  # --no-log: the parent run is left as it was


def final_outcomes(client, run_id: str, tmp_path) -> list[dict[str, str]]:
    (label,) = client.list_artifacts(run_id, "final")
    path = client.download_artifacts(run_id, f"{label.path}/outcomes.csv", str(tmp_path / run_id))
    return list(csv.DictReader(io.StringIO(open(path).read())))


def trial_outcomes(client, run_id: str, tmp_path) -> list[dict[str, str]]:
    path = client.download_artifacts(run_id, "outcomes.csv", str(tmp_path / run_id / "trial"))
    return list(csv.DictReader(io.StringIO(open(path).read())))


def test_the_report_opens_in_a_browser_from_a_file(swept, page):
    tmp_path, *_ = swept
    (index,) = tmp_path.glob("runs/report/*/report/index.html")
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    sizes = page.evaluate("Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight])")
    assert len(sizes) == len(EXPECTED) and all(w > 0 and h > 0 for _, w, h in sizes), sizes
    assert page.title() == "satune report: report"
    text = page.inner_text("body")
    assert "Model cards" in text and "Is the best configuration better" in text and "git " in text
    assert "one seed per configuration" in text.lower()  # no repeats: the verdicts say what they cannot tell
    shot = screenshot(page, "report")
    assert page.problems == []
    assert shot.stat().st_size > 10_000


def test_no_finished_trial_is_one_clear_line(tmp_path, mlflow_server, ray_address):
    """A sweep whose only trial fails for good: the report says so in one line, exit 2."""
    sweep = smoke_file(tmp_path, "unfinished", mlflow_server, **{"search.num_samples": 1, "max_failures": 0})
    done = satune("sweep", sweep, "--address", ray_address, cwd=tmp_path, env={"SATUNE_FAIL_AT_EPOCH": "0"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "warning: the report failed (ReportError: sweep 'unfinished'" in done.stderr  # the sweep's own try
    drawn = satune("report", sweep)
    assert drawn.returncode == 2, drawn.stdout + drawn.stderr
    (line,) = [x for x in drawn.stderr.splitlines() if x.startswith("error:")]
    assert "has no finished trial yet" in line and "Traceback" not in drawn.stderr
