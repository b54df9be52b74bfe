"""The sweep service's overhead: makespan of a real sweep against the ideal (sum of trial times
divided by the concurrent slots), and the start-up times of a local MLflow server and of Ray.

Everything runs in this one process, one after another, on a copy of a sweep file with its storage
in a temporary directory:

    .venv/bin/python bench/sweep_overhead.py [sweeps/wA.yaml] [--samples N] [--epochs N] [--no-final-eval]

The ideal counts the trials' own run times only: the shared ranking fit, actor start-up and a
final stage (AutoAttack on the winners) are all overhead by this measure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from satune.specs import load_sweep
from satune.tracking import LocalServer
from satune.tune import cluster
from satune.tune.driver import run_sweep


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep", nargs="?", default="sweeps/wA.yaml")
    ap.add_argument("--samples", type=int, help="override search.num_samples")
    ap.add_argument("--epochs", type=int, help="override trial.train.epochs")
    ap.add_argument("--no-final-eval", action="store_true",
                    help="drop the final stage (its AutoAttack is not in the trials' own run times)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = yaml.safe_load(Path(args.sweep).read_text())
        data["storage"] = str(tmp / "runs")
        data["tracking"] = {"uri": None}
        if args.samples:
            data["search"]["num_samples"] = args.samples
        if args.epochs:
            data["trial"].setdefault("train", {})["epochs"] = args.epochs
        if args.no_final_eval:
            data.pop("final_eval", None)
        path = tmp / "sweep.yaml"
        path.write_text(yaml.safe_dump(data))
        sweep = load_sweep(path)

        server = LocalServer(tmp / "bench-store")
        mlflow_start, _ = timed(server.start)
        server.stop()
        ray_start, _ = timed(lambda: cluster.start(None))
        cluster.stop()

        wall, result = timed(lambda: run_sweep(sweep, path, echo=lambda line: None))

    trial_s = [r.metrics["time/total_s"] for r in result.rows if "time/total_s" in r.metrics]
    slots = min(sweep.resources.max_concurrent, len(trial_s))
    ideal = sum(trial_s) / slots
    print(f"sweep {sweep.name}: {len(trial_s)} trials x {sweep.trial.train.epochs} epochs, {slots} concurrent slots")
    print(f"local MLflow server start-up:      {mlflow_start:6.1f} s")
    print(f"private Ray start-up:              {ray_start:6.1f} s")
    print(f"trial run time, mean (run_trial):  {sum(trial_s) / len(trial_s):6.1f} s")
    print(f"ideal makespan, sum/slots:         {ideal:6.1f} s")
    print(f"measured makespan (satune sweep):  {wall:6.1f} s")
    print(f"makespan / ideal:                  {wall / ideal:6.2f}")


if __name__ == "__main__":
    main()
