"""What a sweep file may not say: duplicate keys, booleans or non-finite values for numbers, magnitudes
no sweep reaches, a file where a folder goes, budgets beyond the pixel range. The one-line refusals
themselves are in broken_sweeps/ (test_specs.py runs every file there)."""

import math
import time
import typing
from typing import Annotated

import pytest
import torch
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from typer.testing import CliRunner

import satune.specs  # noqa: F401 (every spec class defined)
from satune.cli import app
from satune.data import load_data
from satune.specs import (
    DataSpec,
    Spec,
    SpecError,
    apply_overrides,
    load_sweep,
    parse_final_settings,
    parse_sweep,
    parse_trial,
    parse_yaml,
)
from satune.specs.base import MAX_TRIALS

runner = CliRunner()


def trial(**parts):
    return {"data": {"dataset": "digits"}, "threat": {"norm": "linf", "eps": 0.1}, "method": {"kind": "at"}, **parts}


def sweep(**parts):
    return {"name": "x", "trial": trial(), **parts}


def refused(data) -> str:
    with pytest.raises(SpecError) as exc:
        parse_sweep(data)
    return str(exc.value)


# --------------------------------------------------------------------------------------------
# Duplicate keys


def test_a_key_written_twice_is_refused_at_any_depth_with_its_path_and_lines():
    text = "a: 1\nb:\n  c: [{d: 1, e: 2, d: 3}]\n  f: 1\n  f: 2\n"
    with pytest.raises(SpecError) as exc:
        parse_yaml(text)
    assert exc.value.problems == [
        "b.c[0].d: duplicate key on line 3 (first on line 3): a key must appear once per mapping, "
        "YAML would silently keep the last",
        "b.f: duplicate key on line 5 (first on line 4): a key must appear once per mapping, "
        "YAML would silently keep the last",
    ]


def test_keys_are_compared_as_yaml_reads_them():
    with pytest.raises(SpecError, match="^1: duplicate key on line 2"):
        parse_yaml("1: a\n0x1: b\n")
    assert parse_yaml("1: a\n'1': b\n") == {1: "a", "1": "b"}  # an int and a string: two keys


def test_anchors_aliases_and_merge_keys_still_load_as_safe_load_loads_them():
    text = "base: &b {lr: 0.1, epochs: 3}\nuse: *b\nmerged:\n  <<: *b\n  lr: 0.2\nmore: {<<: [*b], x: 1}\n"
    assert parse_yaml(text) == yaml.safe_load(text)
    assert parse_yaml(text)["merged"] == {"lr": 0.2, "epochs": 3}  # an explicit key overrides a merged one


def test_a_duplicate_inside_an_aliased_mapping_is_reported_once():
    with pytest.raises(SpecError) as exc:
        parse_yaml("a: &x {k: 1, k: 2}\nb: *x\nc: *x\n")
    assert len(exc.value.problems) == 1 and exc.value.problems[0].startswith("a.k: duplicate key on line 1")


def test_a_duplicate_in_a_set_value_is_refused_not_read_as_text():
    with pytest.raises(SpecError, match="--set method: kind: duplicate key on line 1"):
        apply_overrides(trial(), ["method={kind: at, kind: sat}"])


# --------------------------------------------------------------------------------------------
# Numbers are numbers


def _spec_classes() -> list[type[BaseModel]]:
    found, todo = [], [Spec]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def _numeric_leaves(annotation, metadata=()) -> list:
    """The int and float types inside an annotation, each with the metadata that validates it."""
    if typing.get_origin(annotation) is Annotated:
        inner, *meta = typing.get_args(annotation)
        return _numeric_leaves(inner, (*metadata, *meta))
    if annotation in (int, float):
        return [Annotated[(annotation, *metadata)] if metadata else annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return []  # checked as a class of its own
    return [leaf for arg in typing.get_args(annotation) for leaf in _numeric_leaves(arg)]


def _numeric_fields():
    for cls in _spec_classes():
        for name, field in cls.model_fields.items():
            for leaf in _numeric_leaves(field.annotation, tuple(field.metadata)):
                yield f"{cls.__name__}.{name}", leaf


def test_every_number_in_the_specs_refuses_booleans_and_non_finite_values():
    """Every int and float of every spec (inside lists, tuples and unions too): pydantic alone would
    read true as 1 and accept .nan and .inf."""
    fields = list(_numeric_fields())
    assert len(fields) > 60, len(fields)  # the walk found the fields
    lax = []
    for where, leaf in fields:
        adapter = TypeAdapter(leaf)
        for bad in (True, False, math.nan, math.inf, -math.inf, "nan", "inf"):
            try:
                adapter.validate_python(bad)
            except ValidationError:
                continue
            lax.append(f"{where} accepts {bad!r}")
    assert lax == []


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (sweep(seed=True), "seed: must be an integer, got True"),  # once: not copied into trial.seed
        (sweep(trial=trial(train={"lr": "nan"})), "trial.train.lr: must be a finite number, got 'nan'"),
        (sweep(trial=trial(train={"milestones": [0.5, True]})), "trial.train.milestones[1]: must be a number"),
        (sweep(trial=trial(eval={"autoattack": {"n": True}})), "trial.eval.autoattack.n: must be an integer"),
        (sweep(search={"space": {"train.lr": {"uniform": [True, 2]}}}), "search.space.train.lr.uniform[0]: must be"),
        (
            sweep(search={"grid": {"train.epochs": [1, True]}}),
            "search.grid.train.epochs: value True of the grid is invalid",
        ),
        (sweep(search={"repeats": True}), "search.repeats: must be an integer, got True"),
        (sweep(resources={"gpu": math.nan}), "resources.gpu: must be a finite number, got nan"),
        (sweep(tracking={"patience_s": math.inf}), "tracking.patience_s: must be a finite number, got inf"),
        (sweep(final_eval={"top_k": True}), "final_eval.top_k: must be an integer, got True"),
    ],
)
def test_booleans_and_non_finite_values_are_refused_where_a_number_goes(data, line):
    text = refused(data)
    assert len(text.splitlines()) == 1 and text.startswith(line), text


def test_what_numbers_accepted_before_they_still_accept():
    spec = parse_sweep(
        sweep(
            trial=trial(train={"lr": 1, "epochs": 3.0, "milestones": ["1/2", 0.75]}, runtime={"amp": True}),
            search={"space": {"threat.eps": {"choice": ["2/255", "8/255"]}}},
        )
    )
    assert spec.trial.train.lr == 1.0 and spec.trial.train.epochs == 3 and spec.trial.runtime.amp is True
    assert spec.trial.train.milestones == [0.5, 0.75]


# --------------------------------------------------------------------------------------------
# Magnitudes


def test_a_sweep_may_run_up_to_its_trial_limit():
    space = {"train.lr": {"loguniform": [0.001, 0.1]}}
    assert parse_sweep(sweep(search={"num_samples": MAX_TRIALS // 2, "repeats": 2, "space": space}))
    text = refused(sweep(search={"num_samples": MAX_TRIALS // 2 + 1, "repeats": 2, "space": space}))
    assert text.startswith("search: runs 100,002 trials (num_samples 50,001 x 1 grid cells x repeats 2)"), text


def test_the_trial_count_of_a_huge_grid_is_computed_not_enumerated():
    grid = {f"axis{i}": [0, 1] for i in range(2000)}  # 2^2000 cells, more digits than Python prints
    start = time.monotonic()
    text = refused(sweep(search={"grid": grid}))
    assert time.monotonic() - start < 2
    assert text.startswith("search: runs about 10^602 trials (num_samples 1 x about 10^602 grid cells"), text


@pytest.mark.parametrize(
    ("part", "value", "line"),
    [
        ({"train": {"epochs": 10_000}}, None, None),
        ({"train": {"epochs": 10_001}}, None, "trial.train.epochs: must be at most 10000"),
        ({"train": {"batch_size": 65_536}}, None, None),
        ({"method": {"kind": "biamat", "aux": "digits", "aux_batch_size": 65_537}}, None, "aux_batch_size: must"),
        ({"eval": {"pgd_steps": 10_001}}, None, "trial.eval.pgd_steps: must be at most 10000"),
        ({"eval": {"pgd_restarts": 1001}}, None, "trial.eval.pgd_restarts: must be at most 1000"),
        ({"threat": {"norm": "linf", "eps": 0.1, "steps": 10**9}}, None, "trial.threat.steps: must be at most"),
    ],
)
def test_epochs_batches_and_attack_steps_are_bounded(part, value, line):
    data = sweep(trial=trial(**part))
    if part.get("method", {}).get("kind") == "biamat":
        data["trial"]["data"] = {"dataset": "mnist5k", "classes": [0, 1, 2, 3, 4]}
        data["trial"]["method"]["aux"] = "mnist5k[5-9]"
    if line is None:
        assert parse_sweep(data)
    else:
        assert line in refused(data)


# --------------------------------------------------------------------------------------------
# Folders


def _write(tmp_path, **parts):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(sweep(**parts)))
    return f


def test_storage_must_be_a_folder_or_not_exist_yet(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "a_file").write_text("x")
    assert load_sweep(_write(tmp_path, storage="runs"), base_dir=tmp_path)
    assert load_sweep(_write(tmp_path, storage="new/runs"), base_dir=tmp_path)
    with pytest.raises(SpecError) as exc:
        load_sweep(_write(tmp_path, storage="a_file"), base_dir=tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / 's.yaml'}: storage: must be a folder (or not exist yet)")
    assert str(exc.value).endswith(", which is a file")
    # an object store's URL is never looked up on this machine
    tracked = _write(tmp_path, storage="s3://bucket/a_file", tracking={"uri": "http://127.0.0.1:5000"})
    assert load_sweep(tracked, base_dir=tmp_path).storage == "s3://bucket/a_file"


def test_other_folders_are_checked_too(tmp_path):
    (tmp_path / "a_file").write_text("x")
    data = trial(data={"dataset": "cifar10", "root": "a_file"}, runtime={"cache_dir": "/dev/null"})
    with pytest.raises(SpecError) as exc:
        load_sweep(_write(tmp_path, trial=data), base_dir=tmp_path)
    lines = str(exc.value).splitlines()
    assert lines[0].startswith(f"{tmp_path / 's.yaml'}: trial.data.root: must be a folder (or not exist yet), got")
    assert lines[1].endswith(
        "trial.runtime.cache_dir: must be a folder (or not exist yet), got '/dev/null', which is not a folder"
    )


def test_a_file_as_storage_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("x")
    result = runner.invoke(app, ["validate", str(_write(tmp_path, storage="taken"))])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 's.yaml'}: storage: must be a folder (or not exist yet) or an object store's URL "
        f"(s3://bucket/prefix), got '{tmp_path / 'taken'}', which is a file"
    ]


# --------------------------------------------------------------------------------------------
# Threat budgets


def test_linf_budgets_and_steps_stay_within_the_pixel_range():
    assert parse_trial(trial(threat={"norm": "linf", "eps": 1, "step_size": 1}))
    with pytest.raises(
        SpecError, match=r"trial.threat.eps: must be at most 1 with norm linf .*got 8 \(did you mean 8/255\?\)"
    ):
        parse_trial(trial(threat={"norm": "linf", "eps": 8}))
    with pytest.raises(SpecError, match=r"trial.eval.pgd_step_size: must be at most 1 with norm linf"):
        parse_trial(trial(eval={"pgd_step_size": 2}))
    # the evaluation's own budget, under its own norm or the training threat's
    assert parse_trial(trial(eval={"norm": "l2", "eps": 2}))
    with pytest.raises(SpecError, match=r"trial.eval.eps: must be at most 1 with norm linf"):
        parse_trial(trial(threat={"norm": "l2", "eps": 0.5}, eval={"norm": "linf", "eps": 2}))


def test_l2_budgets_stay_within_the_inputs_diameter():
    digits = {"norm": "l2", "eps": 8}  # sqrt(1 x 8 x 8): the farthest two digits images
    assert parse_trial(trial(threat=digits))
    with pytest.raises(SpecError, match=r"trial.threat.eps: must be at most 8 with norm l2 .*1x8x8.*got 8.5"):
        parse_trial(trial(threat={"norm": "l2", "eps": 8.5}))
    resized = {"dataset": "digits", "resize": 28}
    assert parse_trial(trial(data=resized, threat={"norm": "l2", "eps": 27}))
    with pytest.raises(SpecError, match=r"trial.eval.eps: must be at most 55.43 with norm l2 .*3x32x32"):
        parse_trial(
            trial(data={"dataset": "cifar10", "root": "/data"}, threat={"norm": "l2", "eps": 0.5}, eval={"eps": 60})
        )
    with pytest.raises(SpecError, match=r"trial.threat.step_size: must be at most 6.928 with norm l2 .*3x4x4"):
        parse_trial(
            trial(
                data={"dataset": "imagefolder", "root": "/data", "image_size": 4},
                threat={"norm": "l2", "eps": 1, "step_size": 7},
            )
        )


@pytest.mark.parametrize(
    "spec", [DataSpec(dataset="digits"), DataSpec(dataset="digits", resize=12), DataSpec(dataset="mnist5k")]
)
def test_input_shapes_are_what_the_data_loads(spec, tmp_path_factory):
    bundle = load_data(spec, tmp_path_factory.getbasetemp() / "satune-cache", torch.device("cpu"))
    assert spec.input_shape() == bundle.shape


def test_satune_eval_budgets_are_checked_too():
    with pytest.raises(SpecError, match=r"--eps: must be at most 1 with norm linf"):
        parse_final_settings({"norm": "linf", "eps": 2})
    linf = parse_trial(trial())
    with pytest.raises(SpecError, match=r"the evaluation threat: eps: must be at most 1 with norm linf"):
        linf.threat.under(None, 2.0)  # `satune eval --eps 2` on a linf trial
