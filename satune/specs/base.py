"""What every part of a sweep file is built from: the base model, constrained types whose errors
read as rules, the error a user sees, and YAML loading that refuses what no sweep needs.

Imports pydantic, yaml and the standard library only: validating a sweep never starts torch, Ray
or MLflow.
"""

from __future__ import annotations

import re
import reprlib
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, AllowInfNan, BaseModel, BeforeValidator, ConfigDict

from satune.errors import UserError

# --------------------------------------------------------------------------------------------
# Reusable constrained types. Each check raises ValueError("must ...") so that errors read as rules.


def number(value: Any) -> Any:
    """Accept "8/255" wherever a float is expected: budgets are written that way in papers."""
    if isinstance(value, str) and re.fullmatch(r"\s*[\d.eE+-]+\s*/\s*[\d.eE+-]+\s*", value):
        num, den = value.split("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            return value
    return value


def shown(value: Any, limit: int = 60) -> str:
    """A value as it appears in an error line: its repr, cut to `limit` characters (a YAML alias
    can expand a few bytes of file into megabytes of value)."""
    return cut(_REPR.repr(value), limit)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 8, 8, 60, 60


def check(rule: str, ok):
    def check(v):
        if not ok(v):
            raise ValueError(f"must be {rule}")
        return v

    return AfterValidator(check)


def _not_a_bool(what: str):
    """YAML's true/false where a number is meant: pydantic's lax mode would read them as 1 and 0."""

    def refuse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be {what}")
        return value

    return BeforeValidator(refuse)


# Numbers are numbers: never true/false, and a float is finite (no .nan, .inf, "nan", "inf").
Finite = Annotated[float, AllowInfNan(False), _not_a_bool("a number")]
Number = Annotated[Finite, BeforeValidator(number)]  # a finite float that may be written "8/255"
Integer = Annotated[int, _not_a_bool("an integer")]

Positive = Annotated[Number, check("> 0", lambda v: v > 0)]
NonNegative = Annotated[Number, check(">= 0", lambda v: v >= 0)]
Fraction = Annotated[Number, check("in (0, 1]", lambda v: 0 < v <= 1)]
OpenFraction = Annotated[Number, check("in (0, 1)", lambda v: 0 < v < 1)]
Momentum = Annotated[Finite, check("in [0, 1)", lambda v: 0 <= v < 1)]
PositiveInt = Annotated[Integer, check(">= 1", lambda v: v >= 1)]
NonNegativeInt = Annotated[Integer, check(">= 0", lambda v: v >= 0)]


def int_in(low: int, high: int) -> Any:
    return Annotated[Integer, check(f"in [{low}, {high}]", lambda v: low <= v <= high)]


def at_most(high: int, why: str) -> Any:
    """An upper bound whose error says where it comes from (`why`)."""
    return check(f"at most {high} ({why})", lambda v: v <= high)


# Seeds given by a user reach numpy and Optuna, whose generators take 32-bit seeds; a trial's own
# seed is derived (63 bits) unless the sweep file sets it.
Seed = int_in(0, 2**32 - 1)
TrialSeed = int_in(0, 2**63 - 1)
# Counts of processes and threads: above these, a typo that would exhaust the machine.
LoaderWorkers = int_in(0, 64)
Threads = int_in(1, 1024)
Concurrency = int_in(1, 1024)
# Magnitudes no real research sweep reaches: beyond them, a typo (an extra zero, a value in the wrong
# field) that would train for years or allocate more memory than any machine has.
# The longest adversarial-training recipes run a few thousand epochs (2 400 with generated data).
Epochs = Annotated[PositiveInt, at_most(10_000, "past the longest training recipes, a few thousand epochs")]
# 65 536 (64k) images per step: the largest batches ImageNet has been trained with.
BatchSize = Annotated[PositiveInt, at_most(65_536, "64k, the largest batches ImageNet has been trained with")]
# Attack iterations (training's PGD, the evaluation's): PGD-1000 is the longest common evaluation.
AttackSteps = Annotated[PositiveInt, at_most(10_000, "ten times PGD-1000, the longest common evaluation")]
# Random restarts of the evaluation's PGD: evaluations use 1 to 10, rarely 100.
Restarts = Annotated[PositiveInt, at_most(1_000, "far beyond the 1-10 restarts evaluations use")]
# Trials of one sweep (search.trial_count: configurations x repeats): 100 000 trials of 5 minutes
# each are a year of one GPU; the MLflow experiment and the Optuna journal hold one run per trial.
MAX_TRIALS = 100_000
# Names that become directory names, MLflow run names and metric keys: short, plain, never "." or "..".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
Name = Annotated[
    str,
    check("1-64 letters, digits, '-', '_' or '.', starting with a letter or digit", lambda v: bool(_NAME.fullmatch(v))),
]
ExperimentName = Annotated[str, check("1-200 printable characters", lambda v: 0 < len(v) <= 200 and v.isprintable())]
ClassName = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v)]


class FieldProblems(ValueError):
    """Cross-field rule violations raised from model validators, each tied to a field path.

    pydantic reports a model validator's error at the model's own location; the formatter
    (`problem_lines`) reads these paths back out so the user sees `trial.method.classes: ...`.
    """

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"[{path}] {msg}" for path, msg in problems))


def class_problems(
    field: str, classes: list[str] | None, known, owner: str, repeats: bool = True
) -> list[tuple[str, str]]:
    """A class list's problems: repeats, and names `known` lacks (None: known only from the files)."""
    if classes is None:
        return []
    problems = []
    if repeats and len(set(classes)) != len(classes):
        problems.append((field, f"must not repeat a class, got {shown(classes)}"))
    if known is not None:
        owned = f"a class of {owner} ({class_list(known)})"
        problems += [(field, f"{shown(c)} is not {owned}") for c in classes if c not in known]
    return problems


def raise_if(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise FieldProblems(problems)


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def class_list(names) -> str:
    names = list(names)
    listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"classes: {listed}"


class SpecError(UserError):
    """A user mistake in a sweep file or override: one short line per problem, each naming its path.

    At most MAX_PROBLEMS lines of at most MAX_LINE characters: a hostile file gets a bounded answer.
    """

    MAX_PROBLEMS, MAX_LINE = 20, 300

    def __init__(self, problems: list[str], source: str | None = None):
        prefix = f"{source}: " if source else ""
        lines = [cut(prefix + p, self.MAX_LINE) for p in problems[: self.MAX_PROBLEMS]]
        if len(problems) > self.MAX_PROBLEMS:
            lines.append(f"{prefix}... and {len(problems) - self.MAX_PROBLEMS} more problems")
        self.problems, self.source = problems, source
        super().__init__("\n".join(lines))


def cut(line: str, limit: int) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# YAML

MAX_FILE_BYTES = 1 << 20  # sweep files are a few kB
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_VALUES = 100_000  # values after YAML aliases are expanded


def parse_yaml(text: str) -> Any:
    """yaml.safe_load, refusing what no sweep needs and what would exhaust the validator: deep
    nesting (a RecursionError in the parser), aliases that expand into millions of values, and a key
    written twice in one mapping (YAML would keep the last one without a word)."""
    try:
        data = yaml.load(text, Loader=SweepLoader)
    except RecursionError:
        raise SpecError([f"(yaml): nested deeper than {MAX_DEPTH} levels"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise NotYaml([f"(yaml): {where}{cut(problem, 120)}"]) from None
    check_size(data)
    return data


class NotYaml(SpecError):
    """The text does not parse as YAML."""


class SweepLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping, at any depth: PyYAML keeps the
    last value silently, so `lr: 0.1` ... `lr: 0.01` would train with 0.01 whatever the reader saw.

    The check runs on the composed document, before anything is constructed: each node once (an
    alias is not walked again), keys compared as YAML reads them (`1` and `0x1` are one key). Keys
    merged in with `<<: *anchor` are not duplicates: an explicit key overrides them, as YAML says.
    """

    def construct_document(self, node):
        problems = duplicate_keys(self, node)
        if problems:
            raise SpecError(problems)
        return super().construct_document(node)


_MERGE, _VALUE = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"
_UNCOMPARED = object()  # a list or mapping as a key: construction refuses it


def duplicate_keys(loader: yaml.SafeLoader, root: yaml.Node) -> list[str]:
    """One line per key repeated in a mapping: its path, the line it repeats on, its first line."""
    problems: list[tuple[int, str]] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.SequenceNode):
            children = [(child, f"{path}[{i}]") for i, child in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:  # `<<: *a` or `<<: [*a, *b]`: their keys join this mapping
                    merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                    children += [(m, path) for m in merged]
                    continue
                key = _key(loader, key_node)
                where = f"{path}.{key}" if path else str(key)
                if key is not _UNCOMPARED:
                    line = key_node.start_mark.line + 1
                    if key in first:
                        problems.append(
                            (
                                line,
                                f"{where}: duplicate key on line {line} (first on line {first[key]}): a key "
                                "must appear once per mapping, YAML would silently keep the last",
                            )
                        )
                    else:
                        first[key] = line
                children.append((value_node, where))
        stack.extend(reversed(children))
    return [text for _, text in sorted(problems)]  # in the order of the file


def _key(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """A scalar key as YAML reads it (`null` too); _UNCOMPARED for a list or mapping."""
    if not isinstance(node, yaml.ScalarNode):
        return _UNCOMPARED
    if node.tag == _VALUE:  # the `=` key: PyYAML reads it as the string "="
        return node.value
    key = loader.construct_object(node)
    try:
        hash(key)
    except TypeError:
        return _UNCOMPARED
    return key


def check_size(data: Any) -> None:
    """Walk the loaded tree as the validator will (an alias counts each time it is used), stopping
    at the first limit crossed: the walk itself never exceeds MAX_VALUES steps."""
    stack, count = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise SpecError([f"(yaml): expands to more than {MAX_VALUES} values (anchors and aliases?)"])
        if depth > MAX_DEPTH:
            raise SpecError([f"(yaml): nested deeper than {MAX_DEPTH} levels"])
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for item in node.items() for child in item)
        elif isinstance(node, (list, tuple)):
            stack.extend((child, depth + 1) for child in node)
