import platform

import pytest
import ray

from satune.tune.cluster import ClusterError, check_versions


def test_versions_match_to_the_python_patch_level_as_ray_compares(monkeypatch):
    python = platform.python_version()
    check_versions("h:1", {"ray_version": ray.__version__, "python_version": python})
    other_patch = ".".join([*python.split(".")[:2], "99"])
    with pytest.raises(ClusterError, match=f"runs Ray {ray.__version__} on Python {other_patch}, this process"):
        check_versions("h:1", {"ray_version": ray.__version__, "python_version": other_patch})
    monkeypatch.setenv("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL", "minor")
    check_versions("h:1", {"ray_version": ray.__version__, "python_version": other_patch})
    with pytest.raises(ClusterError, match="^version mismatch: the Ray cluster at h:1 runs Ray 1.0.0"):
        check_versions("h:1", {"ray_version": "1.0.0", "python_version": python})


def test_label_selectors_match_as_ray_documents_them():
    from satune.tune.cluster import selects

    h100 = {"ray.io/accelerator-type": "H100", "zone": "a"}
    key = "ray.io/accelerator-type"
    assert selects(h100, {}) and selects(h100, {key: "H100"}) and selects(h100, {key: "in(A100, H100)"})
    assert not selects(h100, {key: "A100"}) and not selects(h100, {key: "!H100"})
    assert selects(h100, {key: "!in(A100,L4)"}) and not selects(h100, {key: "!in(H100,L4)"})
    assert selects({}, {key: "!H100"}) and not selects({}, {key: "H100"})  # an unlabelled node
    assert not selects(h100, {key: "H100", "zone": "b"})


@pytest.mark.parametrize(
    "value",
    [
        "H100",
        "!H100",
        "in(H100,A100)",
        "in(H100, A100)",
        "!in(a,b)",
        "(a,b)",
        "in(H100",
        "",
        "!",
        "in()",
        "a b",
        "-a",
        "x" * 64,
        "in(a,,b)",
        "!!a",
    ],
)
def test_the_sweep_file_takes_the_label_selectors_ray_takes(value):
    from ray._private.label_utils import validate_label_key, validate_label_selector_value

    from satune.specs import SpecError, parse_sweep

    for key in ("ray.io/accelerator-type", "zone", "bad key", "-x/y", "a" * 64):
        ray_ok = (validate_label_key(key) or (validate_label_selector_value(value) if value else "empty")) is None
        data = {
            "name": "s",
            "trial": {"data": {"dataset": "digits"}, "threat": {"norm": "linf", "eps": 0.1}, "method": {"kind": "at"}},
            "resources": {"label_selector": {key: value}},
        }
        try:
            parse_sweep(data)
            ours = True
        except SpecError:
            ours = False
        assert ours == ray_ok, (key, value)
