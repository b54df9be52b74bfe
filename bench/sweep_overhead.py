"""The sweep service's overhead: makespan of a real sweep against the ideal (sum of trial times
divided by the concurrent slots), and the start-up times of a local MLflow server and of Ray.

Everything runs in this one process, one after another, on a copy of a sweep file with its storage
in a temporary directory:

    .venv/bin/python bench/sweep_overhead.py [sweeps/wA.yaml] [--samples N] [--epochs N] [--no-final-eval]
                                             [--shell-loop] [--reuse-actors off|on|both]

The ideal counts the trials' own run times only: the shared ranking fit, actor start-up and a
final stage (AutoAttack on the winners) are all overhead by this measure.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from satune.specs import load_sweep
from satune.sweep.summary import reproduce_command
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
    ap.add_argument(
        "--shell-loop",
        action="store_true",
        help="then run the same trials as `satune run` processes with xargs -P, for comparison",
    )
    ap.add_argument(
        "--no-final-eval",
        action="store_true",
        help="drop the final stage (its AutoAttack is not in the trials' own run times)",
    )
    ap.add_argument(
        "--reuse-actors",
        choices=["off", "on", "both"],
        default="off",
        help="resources.reuse_actors for the sweep (both: one sweep each, off first)",
    )
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
        server = LocalServer(tmp / "bench-store")
        mlflow_start, _ = timed(server.start)
        server.stop()
        ray_start, _ = timed(lambda: cluster.start(None))
        cluster.stop()

        runs = {}  # reuse_actors -> (path, sweep, wall, result)
        for reuse in {"off": [False], "on": [True], "both": [False, True]}[args.reuse_actors]:
            data["resources"] = {**data.get("resources", {}), "reuse_actors": reuse}
            data["storage"] = str(tmp / f"runs-{reuse}")
            path = tmp / f"sweep-{reuse}.yaml"
            path.write_text(yaml.safe_dump(data))
            sweep = load_sweep(path)
            wall, result = timed(lambda: run_sweep(sweep, path, echo=lambda line: None))  # noqa: B023 - called at once
            runs[reuse] = (path, sweep, wall, result)
        path, sweep, _, result = runs[min(runs)]
        slots = min(sweep.resources.max_concurrent, len(result.rows))
        loop = shell_loop(path, result.rows, slots, tmp) if args.shell_loop else None

    print(
        f"sweep {sweep.name}: {len(result.rows)} trials x {sweep.trial.train.epochs} epochs, {slots} concurrent slots"
    )
    print(f"local MLflow server start-up:      {mlflow_start:6.1f} s")
    print(f"private Ray start-up:              {ray_start:6.1f} s")
    for reuse, (_, _, wall, result) in runs.items():
        trial_s = [r.metrics["time/total_s"] for r in result.rows if "time/total_s" in r.metrics]
        ideal = sum(trial_s) / slots
        print(f"-- resources.reuse_actors: {str(reuse).lower()}")
        print(f"trial run time, mean (run_trial):  {sum(trial_s) / len(trial_s):6.1f} s")
        print(f"ideal makespan, sum/slots:         {ideal:6.1f} s")
        print(f"measured makespan (satune sweep):  {wall:6.1f} s")
        print(f"makespan / ideal:                  {wall / ideal:6.2f}")
        if loop is not None:
            print(f"satune sweep / shell loop:         {wall / loop:6.2f}")
    if loop is not None:
        print(f"shell loop, xargs -P {slots} satune run: {loop:6.1f} s  (no Ray, no MLflow, no search)")


def shell_loop(path: Path, rows, slots: int, tmp: Path) -> float:
    """The same configurations and seeds as `satune run` processes, `slots` at a time with xargs:
    what a bash loop around a training script pays (process and import start-up, no tracking)."""
    satune = Path(sys.executable).with_name("satune")
    lines = []
    for r in rows:
        args = shlex.split(reproduce_command(path, r, threads=1))
        lines.append(shlex.join([str(satune), *args[1:], "--out", str(tmp / "loop" / r.trial_id)]))
    (tmp / "commands").write_text("\n".join(lines) + "\n")
    took, done = timed(
        lambda: subprocess.run(
            ["xargs", "-P", str(slots), "-d", "\n", "-I", "CMD", "sh", "-c", "CMD"],
            stdin=(tmp / "commands").open(),
            capture_output=True,
        )
    )
    if done.returncode != 0:
        raise SystemExit(f"the shell loop failed: {done.stderr.decode()[-2000:]}")
    return took


if __name__ == "__main__":
    main()
