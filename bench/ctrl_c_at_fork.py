"""How often a Ctrl-C that arrives while the local MLflow server forks is lost.

A sweep joined to a cluster (`--address`) launches its MLflow server after ray.init, when Ray's
threads are alive; one of them may take the signal, and CPython then raises the KeyboardInterrupt
inside its at-fork hooks, which drop it: the sweep carries on. This process joins a real Ray head
(`ray start --head`, as the tests start it), then launches the server `--n` times with a SIGINT
sent 0..`--delay` s after its log file appears, and counts the interrupts that never arrived.

    .venv/bin/python bench/ctrl_c_at_fork.py [--n 150] [--delay 0.01] [--code /path/to/a/checkout]

`--code` measures another checkout's satune (e.g. a `git worktree` of an older commit).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--delay", type=float, default=0.01)
    parser.add_argument("--code", type=Path, default=ROOT)
    args = parser.parse_args()
    sys.path[:0] = [str(args.code.resolve()), str(ROOT)]
    from satune import tracking
    from satune.tune import cluster
    from tests.integration.conftest import ray_head

    base = Path(tempfile.mkdtemp(prefix="satune-bench-"))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(base / "auth_token")  # a token of its own, as the tests do
    cluster.ensure_private_token()
    outcomes = {"in launch": 0, "after launch": 0, "lost": 0}
    with ray_head(base) as address:
        cluster.start(address)
        for _ in range(args.n):
            server = tracking.LocalServer(Path(tempfile.mkdtemp(dir=base)))
            delay = random.uniform(0, args.delay)

            def press_ctrl_c(server=server, delay=delay) -> None:
                while not server.log_path.exists():
                    time.sleep(0.0001)
                time.sleep(delay)
                os.kill(os.getpid(), signal.SIGINT)

            presser = threading.Thread(target=press_ctrl_c)
            presser.start()
            outcome = "lost"
            try:
                try:
                    server.launch()
                except KeyboardInterrupt:
                    outcome = "in launch"
                else:
                    try:
                        time.sleep(0.5)  # ample: the signal was sent at most `delay` after the fork began
                    except KeyboardInterrupt:
                        outcome = "after launch"
            finally:
                presser.join()
                server.stop()
            outcomes[outcome] += 1
    print(f"satune from {tracking.__file__}")
    print(
        f"{args.n} Ctrl-C sent 0..{args.delay}s after the server's log appeared: "
        + ", ".join(f"{k} {v}" for k, v in outcomes.items())
        + f" (lost: {outcomes['lost'] / args.n:.1%})"
    )


if __name__ == "__main__":
    main()
