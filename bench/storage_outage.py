"""What an outage of the object store costs a sweep kept in it (`storage: s3://...`).

The store is moto's S3 server on 127.0.0.1, stopped and started again on its port (it keeps its
buckets). Three sweeps of the smoke sweep, in this one process, each after its first trial is done:

- none:  no outage (the reference makespan);
- short: the store away for `--short` seconds: the sweep should take about that much longer, and
  no trial should start twice;
- long:  the store away for good: the sweep stops (exit 130) `storage_patience_s` (`--patience`)
  after the store went away, plus what its last tries at saving Tune's state take; then the store
  comes back and `--resume` finishes it.

    .venv/bin/python bench/storage_outage.py [--trials 4] [--epochs 3] [--short 10] [--patience 30]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from satune.tracking import LocalServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import S3_ENV, S3Endpoint  # noqa: E402 - the tests' restartable S3 endpoint


def sweep_file(tmp: Path, name: str, uri: str, args: argparse.Namespace) -> Path:
    data = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    data.update(
        name=name,
        storage="s3://bench/sweeps",
        tracking={"uri": uri, "experiment": name},
        storage_patience_s=args.patience,
    )
    data["search"]["num_samples"] = args.trials
    data["trial"]["train"]["epochs"] = args.epochs
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(path: Path, store: S3Endpoint, outage: float | None) -> tuple[float, float | None, int, str]:
    """(makespan, seconds from the store going away to the exit, exit code, output); `outage`: how
    long the store stays away once the first trial is done (None: no outage, inf: for good)."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "satune.cli", "sweep", str(path), "--no-report", "--plain"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    away: list[float] = []

    def outage_after_first_trial() -> None:
        away.append(time.perf_counter())
        store.stop()
        if outage != float("inf"):
            time.sleep(outage)
            store.start()

    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if outage is not None and not away and re.search(r"\[1/\d+ done\] trial \w+ done", line):
            threading.Thread(target=outage_after_first_trial, daemon=True).start()
    code = proc.wait()
    end = time.perf_counter()
    return end - start, (end - away[0]) if away else None, code, "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--short", type=float, default=10.0)
    parser.add_argument("--patience", type=float, default=30.0)
    args = parser.parse_args()

    import boto3

    store = S3Endpoint()
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": store.url})
    boto3.client("s3").create_bucket(Bucket="bench")
    with tempfile.TemporaryDirectory(prefix="satune-bench-") as tmp_, LocalServer(Path(tmp_) / "mlflow") as server:
        tmp = Path(tmp_)
        os.environ["SATUNE_MIRROR"] = str(tmp / "mirror")
        base, _, code, out = run(sweep_file(tmp, "none", server.uri, args), store, None)
        assert code == 0, out[-3000:]
        print(f"no outage:            {base:6.1f} s", flush=True)

        short, _, code, out = run(sweep_file(tmp, "short", server.uri, args), store, args.short)
        assert code == 0, out[-3000:]
        starts = re.findall(r"trial (\w+) started", out)
        print(
            f"{args.short:.0f} s outage:         {short:6.1f} s  (+{short - base:.1f} s; trials started twice: "
            f"{len(starts) - len(set(starts))})",
            flush=True,
        )

        path = sweep_file(tmp, "long", server.uri, args)
        _, stopped, code, out = run(path, store, float("inf"))
        assert code == 130 and stopped is not None, out[-3000:]
        print(
            f"store away for good:  exit {code} {stopped:.1f} s after it went away (storage_patience_s "
            f"{args.patience:.0f}: +{stopped - args.patience:.1f} s)",
            flush=True,
        )
        store.start()
        resumed = subprocess.run(
            [sys.executable, "-m", "satune.cli", "sweep", str(path), "--resume", "--no-report", "--plain"],
            capture_output=True,
            text=True,
        )
        print(f"--resume once it is back: exit {resumed.returncode}")
    store.stop()


if __name__ == "__main__":
    main()
