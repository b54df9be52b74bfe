import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Rankings and embedded data go to a per-session cache, never the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "satune-cache"
    monkeypatch.setenv("SATUNE_CACHE", str(cache))
    yield


@pytest.fixture
def device():
    import torch

    return torch.device(os.environ.get("SATUNE_TEST_DEVICE", "cpu"))
