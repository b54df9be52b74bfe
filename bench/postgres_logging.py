"""Concurrent trials logging to MLflow: a PostgreSQL-backed server against satune's local SQLite one.

N logger processes (N = 1, 2, 4, 8) each open a run and log K epochs of 20 metrics, one
`satune.tracking.log_metrics` call (one `log_batch` request) per epoch, as trials do, all at once.
Three servers, all `mlflow server` on 127.0.0.1, run side by side and are measured interleaved over
rounds (round 0 warms up and is not counted):

- sqlite: satune's LocalServer (SQLite store, 1 worker), what a sweep without `tracking.uri` gets;
- postgres: the same server on a throwaway PostgreSQL cluster (Debian's postgresql, started as
  tests/integration/test_postgres.py starts it), 1 worker;
- postgres x2: the same with 2 workers, as docker/compose.yaml runs it.

Throughput is every process's batches over the time from "go" (all runs created, every process
waiting) to the last process's last answer, measured in this process. Latency is per request (median and 95th percentile over every request of the rounds).

    .venv/bin/python bench/postgres_logging.py [--epochs 40] [--rounds 3] [--procs 1 2 4 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the PostgreSQL cluster the tests start

from postgres import Postgres, PostgresServer  # noqa: E402

from satune import tracking  # noqa: E402
from satune.tracking import LocalServer  # noqa: E402

# What a trial's epoch row holds (satune/train.py, methods/, evaluate.py): about 20 numbers.
METRICS = [
    "epoch",
    "train/loss",
    "train/acc",
    "train/adv_loss",
    "train/adv_acc",
    "train/lr",
    "train/grad_evals",
    "train/loss_A",
    "train/loss_B",
    "train/acc_A",
    "train/acc_B",
    "select/clean_acc",
    "select/pgd_acc",
    "select/pgd_acc_A",
    "select/pgd_acc_B",
    "select/proxy",
    "time/epoch_s",
    "time/attack_s",
    "time/eval_s",
    "sat/a_share",
]


def logger(tasks: mp.Queue, results: mp.Queue) -> None:
    """One trial-like process: for each task, open a run, say ready, wait for go, log, say done."""
    while (task := tasks.get()) is not None:
        uri, experiment_id, epochs = task
        run_id = tracking.client(uri).create_run(experiment_id).info.run_id
        results.put(("ready", None))
        assert tasks.get() == "go"
        latencies = []
        for epoch in range(epochs):
            row = {k: epoch + i / 100 for i, k in enumerate(METRICS)}
            t0 = time.perf_counter()
            tracking.log_metrics(uri, run_id, row, step=epoch)
            latencies.append(time.perf_counter() - t0)
        results.put(("done", latencies))
        tracking.end_run(uri, run_id, "FINISHED")


def measure(
    workers: list[tuple[mp.Process, mp.Queue]], results: mp.Queue, uri: str, experiment_id: str, n: int, epochs: int
) -> tuple[float, list[float]]:
    """(batches/s, per-request latencies) of n loggers at once."""
    for _, q in workers[:n]:
        q.put((uri, experiment_id, epochs))
    for _ in range(n):
        assert results.get(timeout=120)[0] == "ready"
    t0 = time.perf_counter()
    for _, q in workers[:n]:
        q.put("go")
    latencies: list[float] = []
    for _ in range(n):
        kind, lat = results.get(timeout=600)
        assert kind == "done"
        latencies += lat
    return n * epochs / (time.perf_counter() - t0), latencies


def ms(latencies: list[float], q: float) -> str:
    return f"{1000 * sorted(latencies)[int(q * (len(latencies) - 1))]:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=40, help="batches each logger sends")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8])
    args = ap.parse_args()

    ctx = mp.get_context("spawn")  # fresh processes, like Ray's trial actors
    results: mp.Queue = ctx.Queue()
    workers = []
    for _ in range(max(args.procs)):
        q: mp.Queue = ctx.Queue()
        p = ctx.Process(target=logger, args=(q, results), daemon=True)
        p.start()
        workers.append((p, q))

    with tempfile.TemporaryDirectory() as tmp_, Postgres() as pg:
        tmp = Path(tmp_)
        with (
            LocalServer(tmp / "sqlite") as sqlite,
            PostgresServer(pg, tmp / "pg1", workers=1) as pg1,
            PostgresServer(pg, tmp / "pg2", workers=2) as pg2,
        ):
            servers = {"sqlite": sqlite.uri, "postgres": pg1.uri, "postgres x2": pg2.uri}
            experiments = {k: tracking.ensure_experiment(uri, "bench") for k, uri in servers.items()}
            rate: dict[tuple[str, int], list[float]] = {}
            lat: dict[tuple[str, int], list[float]] = {}
            for r in range(args.rounds + 1):
                for n in args.procs:
                    for name, uri in servers.items():
                        got, latencies = measure(workers, results, uri, experiments[name], n, args.epochs)
                        if r:
                            rate.setdefault((name, n), []).append(got)
                            lat.setdefault((name, n), []).extend(latencies)
                print(f"round {r} done" + (" (warm-up, not counted)" if r == 0 else ""), file=sys.stderr)
    for _, q in workers:
        q.put(None)
    for p, _ in workers:
        p.join(timeout=30)

    print(
        f"PostgreSQL {pg.version}; {args.epochs} batches of {len(METRICS)} metrics per logger; "
        f"median of {args.rounds} rounds; batches/s (latency per request, median / p95 ms)"
    )
    names = list(servers)
    print("| loggers | " + " | ".join(names) + " | postgres/sqlite | postgres x2/sqlite |")
    print("|---|" + "---|" * (len(names) + 2))
    for n in args.procs:
        med = {k: statistics.median(rate[(k, n)]) for k in names}
        cells = [f"{med[k]:.0f} ({ms(lat[(k, n)], 0.5)} / {ms(lat[(k, n)], 0.95)})" for k in names]
        ratios = [f"{med['postgres'] / med['sqlite']:.2f}", f"{med['postgres x2'] / med['sqlite']:.2f}"]
        print(f"| {n} | " + " | ".join(cells + ratios) + " |")
    for k in names:
        one, most = statistics.median(rate[(k, args.procs[0])]), statistics.median(rate[(k, args.procs[-1])])
        print(f"{k}: {args.procs[-1]} loggers / {args.procs[0]}: {most / one:.2f}× the throughput")


if __name__ == "__main__":
    main()
