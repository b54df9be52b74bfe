"""Reading a sweep file: YAML in, a validated SweepSpec out, relative paths made absolute; every
problem a line that names its YAML path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from satune.specs.base import MAX_FILE_BYTES, SpecError, cut, parse_yaml
from satune.specs.messages import problem_lines
from satune.specs.sweep import STORAGE_URL, FinalAutoAttackSpec, SweepSpec
from satune.specs.trial import EvalSpec, TrialSpec


def parse_sweep(data: Any, source: str | None = None) -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError([f"(top level): must be a mapping of sweep keys, got {type(data).__name__}"], source)
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(problem_lines(exc, SweepSpec), source) from None


def parse_trial(data: Any, source: str | None = None) -> TrialSpec:
    try:
        return TrialSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(["trial." + line for line in problem_lines(exc, TrialSpec)], source) from None


def parse_final_settings(
    data: dict[str, Any], base: FinalAutoAttackSpec | None = None
) -> tuple[FinalAutoAttackSpec, EvalSpec]:
    """`satune eval`'s options as AutoAttack settings (over `base`) and a threat override."""
    aa = {
        **(base.model_dump(exclude_unset=True) if base else {}),
        **{k: v for k, v in data.items() if k in FinalAutoAttackSpec.model_fields},
    }
    if "attacks" in data and "version" not in data:
        aa["version"] = "custom"
    threat = {k: data[k] for k in ("norm", "eps") if k in data}
    problems = []
    for cls, values, flag in ((FinalAutoAttackSpec, aa, "--"), (EvalSpec, threat, "--")):
        try:
            cls.model_validate(values)
        except ValidationError as exc:
            problems += [flag + line.replace("attacks", "attack", 1) for line in problem_lines(exc, cls)]
    if problems:
        raise SpecError(problems)
    return FinalAutoAttackSpec.model_validate(aa), EvalSpec.model_validate(threat)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpecError([f"larger than {MAX_FILE_BYTES >> 20} MiB; a sweep file is a few kB"], str(path))
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(["file not found"], str(path)) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError([f"cannot read the file ({exc.__class__.__name__})"], str(path)) from None
    try:
        return parse_yaml(text)
    except SpecError as exc:
        raise SpecError(exc.problems, str(path)) from None


def load_sweep(path: str | Path, base_dir: str | Path | None = None) -> SweepSpec:
    """Read and validate a sweep file; relative paths (storage, data.root, cache) become absolute.

    Relative paths are taken from `base_dir` (default: the current directory, where the user ran
    satune), because trials run in their own working directories.
    """
    spec = absolutize(parse_sweep(read_yaml(path), str(path)), Path(base_dir or Path.cwd()))
    problems = folder_problems(spec)
    if problems:
        raise SpecError(problems, str(path))
    return spec


_PATH_KEYS = ("data.root", "runtime.cache_dir")  # trial fields that name folders


def _abs(path: str, base: Path) -> str:
    """`~` expanded, relative to `base`, absolute: trials run in other working directories."""
    return str((base / Path(path).expanduser()).resolve())


def folder_problems(spec: SweepSpec) -> list[str]:
    """Paths (absolute by now) that must name a folder but name something else that exists: a file
    given as `storage` would fail when the sweep first writes there, after Ray has started."""
    trial = spec.trial
    folders: list[tuple[str, str | None]] = [] if STORAGE_URL.match(spec.storage) else [("storage", spec.storage)]
    folders += [("trial.data.root", trial.data.root), ("trial.runtime.cache_dir", trial.runtime.cache_dir)]
    folders += [(f"trial.method.aux[{i}].root", a.root) for i, a in enumerate(getattr(trial.method, "aux", None) or [])]
    for key, dom in spec.search.space.items():
        if key in _PATH_KEYS and dom.kind in ("choice", "grid"):
            folders += [
                (f"search.space.{key}.{dom.kind}[{i}]", v) for i, v in enumerate(dom.value) if isinstance(v, str)
            ]
    problems = []
    for key, folder in folders:
        if folder is None:
            continue
        path = Path(folder)
        try:
            path.stat()
        except (OSError, ValueError):  # not there yet (made when needed), or unreachable: found at run time
            continue
        if not path.is_dir():
            what = "a file" if path.is_file() else "not a folder"
            url = " or an object store's URL (s3://bucket/prefix)" if key == "storage" else ""
            got = cut(repr(folder), 160)  # (a path is worth more of the line than other values)
            problems.append(f"{key}: must be a folder (or not exist yet){url}, got {got}, which is {what}")
    return problems


def absolutize(spec: SweepSpec, base: Path) -> SweepSpec:
    data = spec.model_dump(exclude_unset=True, by_alias=True)
    if not STORAGE_URL.match(spec.storage):  # an object store's URL stays as it is
        data["storage"] = _abs(spec.storage, base)
    data["trial"] = absolutize_trial(spec.trial, base).model_dump(exclude_unset=True, by_alias=True)
    for key, dom in spec.search.space.items():  # a searched folder is a folder too
        if key in _PATH_KEYS and dom.kind in ("choice", "grid"):
            values = [_abs(v, base) if isinstance(v, str) else v for v in dom.value]
            data["search"]["space"][key] = {dom.kind: values}
    return SweepSpec.model_validate(data)


def absolutize_trial(trial: TrialSpec, base: Path) -> TrialSpec:
    data = trial.model_dump(exclude_unset=True, by_alias=True)
    for key in _PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(trial, section), name)
        if value is not None:
            data[section][name] = _abs(value, base)
    data["method"] = trial.method.with_paths(lambda path: _abs(path, base))
    return TrialSpec.model_validate(data)
