"""Dotted paths into a trial (`method.w_A`): resolving them to fields, setting them, and checking a
searched or overridden value against the field it targets."""

from __future__ import annotations

import copy
import difflib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from satune.specs.base import NotYaml, SpecError, parse_yaml, shown
from satune.specs.messages import flatten, problem_lines
from satune.specs.methods import METHOD_SPECS
from satune.specs.trial import TrialSpec

if TYPE_CHECKING:
    from satune.specs.sweep import DomainSpec


def set_path(tree: dict, dotted: str, value: Any) -> dict:
    """A deep copy of `tree` with `value` at `dotted` (intermediate dicts created)."""
    out = copy.deepcopy(tree)
    node = out
    *parents, leaf = dotted.split(".")
    for part in parents:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[leaf] = value
    return out


def resolve_field(dotted: str, trial: dict) -> str | None:
    """None when `dotted` names a field of TrialSpec (for this trial's method kind), else why not."""
    model: Any = TrialSpec
    node: Any = trial
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" (did you mean '{'.'.join(parts[:i] + [close[0]])}'?)" if close else ""
            return f"'{dotted}' is not a field of the trial{hint}"
        node = node.get(part, {}) if isinstance(node, dict) else {}
        model = _submodel(fields[part].annotation, node)
        if i < len(parts) - 1 and model is None:
            return f"'{'.'.join(parts[: i + 1])}' has no sub-fields"
    return None


def _submodel(annotation: Any, node: Any):
    """The pydantic model behind a field annotation (picking the union member by `kind`)."""
    candidates = [a for a in flatten(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(candidates) > 1 and isinstance(node, dict):
        for c in candidates:
            kind = c.model_fields.get("kind")
            if kind is not None and kind.default == node.get("kind"):
                return c
    return candidates[0] if candidates else None


def check_search_key(base: dict, key: str, dom: DomainSpec) -> list[str]:
    why = resolve_field(key, base)
    if why is not None:
        return [why]
    problems = []
    for value in dom.probes():
        try:
            TrialSpec.model_validate(set_path(base, key, value))
        except ValidationError as exc:
            for line in problem_lines(exc, TrialSpec):
                problems.append(f"value {shown(value)} of the {dom.kind} is invalid for trial.{line}")
            break
    return problems


def apply_overrides(trial: dict, overrides: list[str]) -> dict:
    """Apply `key=value` strings (value parsed as YAML) to a trial dict; raise SpecError on bad ones."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if key.startswith("trial."):
            key = key[len("trial.") :]
        if not sep or not key:
            problems.append(f"--set {item}: expected key=value")
            continue
        why = resolve_field(key, trial)
        if why is not None:
            problems.append(f"--set {item}: {why}")
            continue
        if key == "method.kind" and (other := _keys_of_another_kind(trial.get("method"), raw)):
            problems.append(f"--set {item}: {other}")
            continue
        try:
            value = parse_yaml(raw)
        except NotYaml:
            value = raw  # the text as it is
        except SpecError as exc:
            problems.append(f"--set {key}: {exc.problems[0].removeprefix('(yaml): ')}")
            continue
        trial = set_path(trial, key, value)
    if problems:
        raise SpecError(problems)
    return trial


def _keys_of_another_kind(method: Any, raw: str) -> str | None:
    """Why `--set method.kind=NEW` cannot keep the base method's other keys, if it cannot."""
    new = raw.strip()
    spec = next((c for c in METHOD_SPECS if c.model_fields["kind"].default == new), None)
    if spec is None or not isinstance(method, dict) or method.get("kind") == new:
        return None  # an unknown kind is reported by validation, with the kinds there are
    foreign = [k for k in method if k != "kind" and k not in spec.model_fields]
    if not foreign:
        return None
    return (
        f"the base method's {', '.join(foreign)} belong to {method.get('kind')}, not {new}: "
        f"set the whole method instead, e.g. --set 'method={{kind: {new}}}'"
    )
