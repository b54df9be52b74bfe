"""bench/gpu_check.py, the one script a person runs in a GPU's few minutes, runs here first: `--dry-run`
takes every part through the same code on the CPU at tiny sizes (the CUDA tests, the AT epoch, where its
time goes, BiaMAT, AutoAttack, and real `satune sweep`s on fabricated CIFAR-10 files, Ray and MLflow
included), and must exit 0 with a number in every row that measures something."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = {"cuda_tests", "at_epoch", "where", "biamat", "autoattack", "sweep"}
# Rows that must hold a finite positive number in a dry run.
MEASURED = [
    "at_epoch.fp32_nchw",
    "at_epoch.fp32_nhwc",
    "at_epoch.bf16_nchw",
    "at_epoch.bf16_nhwc",
    "at_epoch.clean",
    "at_epoch.goal",
    "at_epoch.fit_check",
    "where.pipeline",
    "where.autotuned",
    "biamat.at",
    "biamat.biamat",
    "biamat.ratio",
    "autoattack.seconds",
    "autoattack.images_per_s",
    "sweep.k1.images_per_s",
    "sweep.k2.images_per_s",
]
CPU_ONLY_NA = ["where.syncs", "sweep.k1.peak_mib", "sweep.k2.peak_mib"]  # CUDA-only measurements

pytestmark = pytest.mark.integration


def positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_gpu_check_dry_run_measures_every_part(tmp_path):
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["failures"] == []
    assert {"device", "torch", "cuda", "date"} <= set(report["meta"])
    rows = {r["key"]: r for r in report["rows"]}
    assert {r["part"] for r in report["rows"]} >= PARTS
    assert not [k for k in rows if k.endswith(".skipped") and k != "cuda_tests.skipped"], "a part was skipped"
    bad = {k: rows.get(k, {}).get("value") for k in MEASURED if not positive(rows.get(k, {}).get("value"))}
    assert not bad, f"rows without a finite positive value: {bad}"
    evals = [r for k, r in rows.items() if k.startswith("where.eval_bs")]
    assert len(evals) == 3 and all(positive(r["value"]) for r in evals), evals
    tests = {k: rows[f"cuda_tests.{k}"]["value"] for k in ("passed", "skipped", "failed")}
    assert tests["failed"] == tests["passed"] == 0 and tests["skipped"] > 0, tests  # the CPU run hides any GPU
    for key in CPU_ONLY_NA:  # --dry-run forces the CPU: said so, never a made-up number
        assert rows[key]["value"] is None and rows[key]["note"].startswith("n/a"), rows[key]
    for part in PARTS:  # the printed table has every part
        assert f"\n{part} " in done.stdout
