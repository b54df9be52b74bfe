"""pydantic's validation errors as the lines a user reads: the YAML path, the rule, the value
(bounded), and the closest allowed key for a typo."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from satune.specs.base import FieldProblems, shown
from satune.specs.methods import METHOD_KINDS


def _loc(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_MEMBERS = ("function-", "literal[")  # location parts pydantic adds for validators and union members
_TAGS = set(METHOD_KINDS)  # pydantic puts the union member's tag in the error location
_TYPE_RULES = {
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list [low, high]",
    "too_short": "has too few items",
    "too_long": "has too many items",
    "dict_type": "must be a mapping",
    "finite_number": "must be a finite number",
}


def problem_lines(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem, each `yaml.path: rule, got value`; `root` is the model validated."""
    lines: list[str] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False):
        # Union members and validators add their own location parts; the user's path is what remains.
        loc = [p for p in err["loc"] if not (isinstance(p, str) and (p in _TAGS or p.startswith(_MEMBERS)))]
        if kind_of_union_member(err["loc"]):
            where = _loc(loc)
            if where in seen:  # the same value rejected by another member of a union: one line is enough
                continue
            seen.add(where)
        msg = err["msg"]
        kind = err["type"]
        inner = err.get("ctx", {}).get("error")
        if isinstance(inner, FieldProblems):
            for path, text in inner.problems:  # (an empty path: the model's own location)
                lines.append(f"{_loc(loc + (path.split('.') if path else [])) or '(top level)'}: {text}")
            continue
        if kind == "value_error" and isinstance(inner, ValueError):
            msg = str(inner)
        if kind == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(err["loc"], root)
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "union_tag_invalid":
            msg = f"must be one of {err['ctx']['expected_tags']}, got {shown(err['ctx']['tag'])}"
            loc = loc + ["kind"]
        elif kind == "union_tag_not_found":
            msg = "required key is missing"
            loc = loc + ["kind"]
        elif kind in _TYPE_RULES:
            msg = _TYPE_RULES[kind]
        elif kind == "literal_error":
            msg = f"must be one of {err['ctx']['expected']}"
        if kind not in ("missing", "extra_forbidden", "union_tag_invalid", "union_tag_not_found", "model_type"):
            msg += f", got {shown(err['input'])}"
        elif kind == "model_type":
            msg = f"must be a mapping, got {shown(err['input'])}"
        lines.append(f"{_loc(loc) or '(top level)'}: {msg}")
    return lines


def kind_of_union_member(raw_loc: tuple) -> bool:
    return any(isinstance(p, str) and p.startswith(_MEMBERS) for p in raw_loc)


def _did_you_mean(raw_loc: tuple, root: type[BaseModel]) -> str:
    """Suggest the closest allowed key for an unknown one (walks the models along the raw loc)."""
    *parent, key = raw_loc
    models: list[Any] = [root]
    for part in parent:
        if isinstance(part, int):
            continue
        with_field = [m for m in models if part in m.model_fields]
        if with_field:
            models = [a for a in flatten(with_field[0].model_fields[part].annotation) if _is_model(a)]
            models += [a for m in flatten(with_field[0].model_fields[part].annotation) for a in _inner_models(m)]
        else:  # a union tag: keep the member whose kind it names
            models = [m for m in models if "kind" in m.model_fields and m.model_fields["kind"].default == part]
    if len(models) != 1 or not isinstance(key, str):
        return ""
    allowed = [f.alias or name for name, f in models[0].model_fields.items()]
    close = [a for a in allowed if a.lower() == key.lower()] or difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"


def _is_model(a: Any) -> bool:
    return isinstance(a, type) and issubclass(a, BaseModel)


def _inner_models(annotation: Any) -> list[Any]:
    """Models inside list[...] / dict[str, ...] annotations (their items are addressed by index/key)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (list, dict) else ()
    return [m for a in args for m in flatten(a) if _is_model(m)]


def flatten(annotation: Any) -> list[Any]:
    """The types inside an annotation: Annotated unwrapped, unions spread out."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return flatten(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [x for a in typing.get_args(annotation) for x in flatten(a)]
    return [annotation]
