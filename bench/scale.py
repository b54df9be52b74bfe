"""What grows with the number of trials: the same short trial (embedded digits, one epoch, about a
second of training) swept at N = 10, 100, 1000 trials by TPE over w_A and lr, on one node (a private
Ray) and on Ray's test cluster with several nodes (every node on this machine, one CPU each).

    .venv/bin/python bench/scale.py [--trials 10 100 1000] [--layouts 1 2] [--slots 2]

Each (layout, N) runs in a fresh process (its peak memory is the driver's), one after another. Per
run it prints:

- the makespan (first trial run opened -> last one ended, in MLflow) against the ideal (the trials'
  own `time/total_s` summed, over the slots), and satune's overhead per trial in slot-seconds
  ((makespan x slots - trials' own time) / N): what surrounds a trial, start-up excluded;
- the wall time of `run_sweep`, start-up and the end included, and the driver's peak memory;
- MLflow requests (the local server's access log) and rows (metrics, params, tags) per trial;
- bytes left in storage per trial: Tune's folder (checkpoints) and MLflow's artifacts;
- Optuna's time to propose one more trial at N (TPE, on a copy of the sweep's journal);
- the time to build and print the end tables, to draw the report, and to answer the comparison
  view's query (the MLflow UI's first page of the parent's runs, as the link opens it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from satune.tracking.tags import PARENT_TAG

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(tmp: Path, trials: int, slots: int) -> Path:
    data = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    data["name"] = f"scale-{trials}"
    data["storage"] = str(tmp / "runs")
    data["tracking"] = {"uri": None}
    data["trial"]["train"]["epochs"] = 1
    data["search"]["num_samples"] = trials
    data["search"]["space"] = {"method.w_A": {"loguniform": [0.5, 4]}, "train.lr": {"loguniform": [0.01, 0.1]}}
    data["resources"]["max_concurrent"] = slots
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one(trials: int, nodes: int, slots: int, keep: Path | None = None) -> dict:
    """One sweep in this process; its figures as a dict. `keep`: move its storage (MLflow store, run
    folder, report) there instead of deleting it, to look at what a person sees."""
    tmp = Path(tempfile.mkdtemp(prefix="satune-scale-"))
    if nodes > 1:  # token auth, as a cluster has it: Ray reads these when it is imported, below
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(tmp / "ray-token")
        os.environ["RAY_AUTH_MODE"] = "token"
    from satune.cli import _show_ending
    from satune.report import build_report
    from satune.specs import load_sweep
    from satune.sweep.ending import ending
    from satune.tune.driver import run_sweep

    path = sweep_file(tmp, trials, slots)
    sweep = load_sweep(path)
    cluster, address = None, None
    if nodes > 1:
        from satune.tune.cluster import ensure_private_token

        ensure_private_token()
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(nodes):
            cluster.add_node(num_cpus=max(1, slots // nodes))
        cluster.wait_for_nodes()
        address = cluster.address
    out: dict = {"trials": trials, "nodes": nodes, "slots": slots}

    def report(uri: str) -> None:  # while the tracking server still runs
        t0 = time.perf_counter()
        build_report(uri, sweep.name, out=tmp / "report", echo=lambda m: None)
        out["report_s"] = time.perf_counter() - t0
        out["view_s"] = comparison_query(uri, sweep)

    try:
        t0 = time.perf_counter()
        result = run_sweep(sweep, path, address=address, echo=lambda line: None, report=report)
        out["wall_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        import typer
        from rich.console import Console

        import satune.cli as cli

        cli.out = Console(file=io.StringIO(), width=160)
        try:
            _show_ending(ending(sweep, result, path), "")
        except typer.Exit:
            pass
        out["end_table_s"] = time.perf_counter() - t0
        out["end_table_lines"] = cli.out.file.getvalue().count("\n")
    finally:
        if cluster is not None:
            cluster.shutdown()
    out["driver_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out |= from_store(tmp / "runs", trials, slots)
    out["propose_s"] = propose_time(result.directory, sweep)
    if keep is not None:
        shutil.rmtree(keep, ignore_errors=True)
        shutil.move(tmp, keep)
        kept = yaml.safe_load((keep / "sweep.yaml").read_text()) | {"storage": str(keep / "runs")}
        (keep / "sweep.yaml").write_text(yaml.safe_dump(kept))  # `satune ui` and `report` find it there
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def comparison_query(uri: str, sweep) -> float:
    """The MLflow UI's first page of the comparison link: the parent's runs, ordered by the metric."""
    from mlflow.tracking import MlflowClient

    from satune.tracking import SWEEP_NAME_TAG, sweep_parents
    from satune.tracking.views import runs_view

    parent = sweep_parents(uri, sweep.name)[0]
    view = runs_view(sweep, parent.run_id, sweep.search.metrics)
    client = MlflowClient(uri)
    t0 = time.perf_counter()
    order = f"{view['orderByKey']} {'ASC' if view['orderByAsc'] else 'DESC'}"
    client.search_runs([parent.experiment_id], view["searchFilter"], order_by=[order], max_results=100)
    assert SWEEP_NAME_TAG  # (the parent found by its tag)
    return time.perf_counter() - t0


def from_store(storage: Path, trials: int, slots: int) -> dict:
    db = sqlite3.connect(storage / "mlflow" / "mlflow.db")
    parent_tag = PARENT_TAG  # (a trial run: the child of the sweep's)
    rows = db.execute(
        "select r.run_uuid, r.start_time, r.end_time from runs r join tags t on t.run_uuid = r.run_uuid "
        "where t.key = ?",
        (parent_tag,),
    ).fetchall()
    own = [
        v
        for (v,) in db.execute(
            "select value from latest_metrics where key = 'time/total_s' and run_uuid in "
            "(select run_uuid from tags where key = ?)",
            (parent_tag,),
        )
    ]
    makespan = (max(r[2] for r in rows) - min(r[1] for r in rows)) / 1000
    counts = {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in ("metrics", "params", "tags")}
    log = (storage / "mlflow" / "server.log").read_text(errors="replace")
    calls = re.findall(r'"(GET|POST|PUT|PATCH|DELETE) /(?!health)([^ ?]*)', log)
    requests = len(calls)
    kinds: dict[str, int] = {}
    for method, where in calls:
        kind = f"{method} " + re.sub(r"/artifacts/.*", "/artifacts/...", where)
        kinds[kind] = kinds.get(kind, 0) + 1
    tune_bytes = sum(p.stat().st_size for p in storage.rglob("*") if p.is_file() and "mlflow" not in p.parts)
    art = storage / "mlflow" / "artifacts"
    art_bytes = sum(p.stat().st_size for p in art.rglob("*") if p.is_file())
    return {
        "finished": len(own),
        "makespan_s": makespan,
        "ideal_s": sum(own) / slots,
        "trial_mean_s": sum(own) / max(1, len(own)),
        "overhead_per_trial_s": (makespan * slots - sum(own)) / trials,
        "requests_per_trial": requests / trials,
        "requests_by_kind_per_trial": {k: round(v / trials, 2) for k, v in sorted(kinds.items(), key=lambda x: -x[1])},
        "rows_per_trial": {k: v / trials for k, v in counts.items()},
        "tune_bytes_per_trial": tune_bytes / trials,
        "artifact_bytes_per_trial": art_bytes / trials,
    }


def propose_time(run_dir: Path, sweep) -> float:
    """TPE's time to propose one more trial after N, on a copy of the journal."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from satune.sweep.rundir import JOURNAL_FILE
    from satune.tune.space import sampler

    copy = Path(tempfile.mkdtemp()) / JOURNAL_FILE
    shutil.copy(run_dir / JOURNAL_FILE, copy)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(copy)))
    study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=sampler(sweep.search, sweep.seed))
    from satune.tune.space import optuna_space

    t0 = time.perf_counter()
    study.ask(optuna_space(sweep.search))
    took = time.perf_counter() - t0
    shutil.rmtree(copy.parent, ignore_errors=True)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--layouts", type=int, nargs="+", default=[1, 2], help="nodes: 1 = a private Ray")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # (trials, nodes): one run, JSON out
    ap.add_argument("--json", type=Path, help="also write every run's figures here")
    ap.add_argument("--keep", type=Path, help="keep the largest one-node run's storage and report here")
    args = ap.parse_args()
    if args.one:
        print("SCALE " + json.dumps(one(args.one[0], args.one[1], args.slots, args.keep)), flush=True)
        return
    results = []
    for nodes in args.layouts:
        for n in args.trials:
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--one", str(n), str(nodes), "--slots", str(args.slots)]
            if args.keep is not None and nodes == args.layouts[0] and n == max(args.trials):
                cmd += ["--keep", str(args.keep)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in done.stdout.splitlines() if x.startswith("SCALE ")), None)
            if done.returncode != 0 or line is None:
                raise SystemExit(f"N={n}, {nodes} node(s) failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(line.removeprefix("SCALE ")))
            print(f"(N={n}, {nodes} node(s): {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            if args.json:  # after each run: a later failure loses none
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    table(results)


def table(results: list[dict]) -> None:
    cols = [
        ("nodes", "{nodes}"),
        ("N", "{trials}"),
        ("done", "{finished}"),
        ("wall s", "{wall_s:.0f}"),
        ("trial s", "{trial_mean_s:.2f}"),
        ("makespan/ideal", "{ratio:.2f}"),
        ("overhead s/trial", "{overhead_per_trial_s:.2f}"),
        ("driver MiB", "{driver_peak_mib:.0f}"),
        ("requests/trial", "{requests_per_trial:.1f}"),
        ("metric rows/trial", "{metric_rows:.0f}"),
        ("Tune KiB/trial", "{tune_kib:.0f}"),
        ("artifact KiB/trial", "{art_kib:.0f}"),
        ("propose ms", "{propose_ms:.0f}"),
        ("end table s", "{end_table_s:.2f}"),
        ("report s", "{report_s:.1f}"),
        ("view ms", "{view_ms:.0f}"),
    ]
    print("| " + " | ".join(c for c, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        r = r | {
            "ratio": r["makespan_s"] / r["ideal_s"],
            "metric_rows": r["rows_per_trial"]["metrics"],
            "tune_kib": r["tune_bytes_per_trial"] / 1024,
            "art_kib": r["artifact_bytes_per_trial"] / 1024,
            "propose_ms": r["propose_s"] * 1000,
            "view_ms": r["view_s"] * 1000,
        }
        print("| " + " | ".join(f.format(**r) for _, f in cols) + " |")


if __name__ == "__main__":
    main()
