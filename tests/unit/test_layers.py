"""The import rules of docs/architecture.md, checked on the source: imports flow one way, left to right, and
each heavy dependency has one home."""

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "satune"
ORDER = [
    "errors",
    "seeds",
    "stats",
    "watchdog",
    "specs",
    "runtime",
    "data",
    "models",
    "attacks",
    "methods",
    "evaluate",
    "train",
    "ranking",
    "trial",
    "tracking",
    "final",
    "sweep",
    "tune",
    "report",
    "api",
    "cli",
]
HOMES = {"mlflow": {"tracking"}, "ray": {"tune"}, "pyautoattack": {"evaluate"}, "autoattack": {"evaluate"}}


def layer(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    return rel.parts[0]


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


SOURCES = sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_flow_left_to_right(path):
    me = layer(path)
    for name in imports(path):
        top = name.split(".")[0]
        if top == "satune" and "." in name:
            other = name.split(".")[1]
            assert ORDER.index(other) <= ORDER.index(me), f"{me} imports {name}, which is to its right"
        if top in HOMES:
            assert me in HOMES[top], f"{me} imports {top}; only {HOMES[top]} may"


@pytest.mark.parametrize("path", [p for p in SOURCES if layer(p) != "tracking"], ids=lambda p: str(p.relative_to(PKG)))
def test_mlflow_entities_are_read_only_inside_tracking(path):
    """Outside tracking/ a run is satune's RunRecord: reading an MLflow Run's `.info` or `.data.<tags,
    params, metrics>` would tie that module to MLflow's entities, which tracking/ keeps to itself."""
    code = path.read_text()
    found = re.findall(r"\.info\.\w+|\.data\.(?:tags|params|metrics)\b", code)
    assert not found, f"{path.name} reads MLflow entities: {sorted(set(found))}"


def test_only_the_cli_reaches_into_tune_and_only_for_its_entry_points():
    """The report, the API and the CLI read a sweep through satune.sweep (no Ray); the CLI starts the
    driver (and the final stage, for `satune eval`), and that is all it takes from tune/."""
    entry = {"satune.tune.driver", "satune.tune.final_stage"}
    for path in SOURCES:
        if layer(path) in ("report", "api", "cli"):
            reached = {n for n in imports(path) if n == "satune.tune" or n.startswith("satune.tune.")}
            assert reached <= (entry if layer(path) == "cli" else set()), (path.name, reached)


@pytest.mark.parametrize("path", sorted((PKG / "tune").glob("[!_]*.py")), ids=lambda p: p.name)
def test_tune_holds_only_what_needs_ray(path):
    """A module of tune/ that needs no Ray belongs in satune.sweep, where the report and the CLI can read it."""
    assert any(n.split(".")[0] == "ray" for n in imports(path))


@pytest.mark.parametrize("path", sorted((PKG / "specs").glob("*.py")), ids=lambda p: p.name)
def test_specs_import_stdlib_pydantic_and_yaml_only(path):
    allowed = {
        "__future__",
        "collections",
        "copy",
        "dataclasses",
        "difflib",
        "itertools",
        "math",
        "re",
        "reprlib",
        "types",
        "typing",
        "urllib",
        "pathlib",
        "yaml",
        "pydantic",
        "satune",
    }
    assert {n.split(".")[0] for n in imports(path)} <= allowed


def test_the_sweep_driver_never_imports_torch():
    """The driver only schedules: torch (1–2 s to import, ~0.3 GB) loads in the trials alone."""
    import subprocess
    import sys

    code = "import sys, satune.cli, satune.tune.driver, satune.tune.final_stage; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_the_architecture_doc_draws_this_order():
    """docs/architecture.md names the layers in the order this file enforces."""
    import re

    doc = (PKG.parent / "docs" / "architecture.md").read_text()
    block = doc.split("```text", 1)[1].split("```", 1)[0]
    assert re.findall(r"[a-z_]+", block) == ORDER
