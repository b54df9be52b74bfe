"""A sweep's makespan with `storage` in an S3 bucket against the same sweep on a local folder.

The bucket is moto's S3 server on 127.0.0.1 (in memory, no network between): the ratio is what
satune and Tune pay to go through S3's API (fsspec, uploads of every checkpoint and of the
experiment state every 2 s, the run's own files) rather than what a real bucket's latency adds.
Both sweeps log to one local MLflow server and start their own Ray; they alternate, `--rounds`
times each, in this one process:

    .venv/bin/python bench/storage.py [--trials 4] [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from satune.tracking import LocalServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import S3_ENV, S3Endpoint  # noqa: E402 - the tests' S3 endpoint (moto on 127.0.0.1)


def sweep_file(tmp: Path, name: str, storage: str, uri: str, trials: int, epochs: int) -> Path:
    data = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    data.update(name=name, storage=storage, tracking={"uri": uri, "experiment": name})
    data["search"]["num_samples"] = trials
    data["trial"]["train"]["epochs"] = epochs
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def timed_sweep(path: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "satune.cli", "sweep", str(path), "--no-report", "--plain"]
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{path.name} failed:\n{done.stderr[-3000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import boto3

    s3 = S3Endpoint()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": s3.url}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="bench")
    times: dict[str, list[float]] = {"folder": [], "s3": []}
    with tempfile.TemporaryDirectory(prefix="satune-bench-") as tmp_, LocalServer(Path(tmp_) / "mlflow") as server:
        tmp = Path(tmp_)
        env["SATUNE_MIRROR"] = str(tmp / "mirror")
        for r in range(args.rounds):
            for kind in ("folder", "s3") if r % 2 == 0 else ("s3", "folder"):
                storage = str(tmp / "runs") if kind == "folder" else "s3://bench/sweeps"
                path = sweep_file(tmp, f"{kind}{r}", storage, server.uri, args.trials, args.epochs)
                times[kind].append(timed_sweep(path, env))
                print(f"round {r + 1} {kind:6s}: {times[kind][-1]:6.1f} s", flush=True)
        objects = boto3.client("s3").list_objects_v2(Bucket="bench").get("KeyCount", 0)
    s3.stop()
    folder, bucket = statistics.median(times["folder"]), statistics.median(times["s3"])
    print(f"\n{args.trials} trials x {args.epochs} epochs, 2 at once, medians of {args.rounds}:")
    print(f"  local folder  {folder:6.1f} s")
    print(f"  s3 (moto)     {bucket:6.1f} s   ratio s3/folder {bucket / folder:.2f}  ({objects} objects in the bucket)")


if __name__ == "__main__":
    main()
