"""Fixtures shared by the torch-engine test areas: the tiny checkpoint generated once per session into a temp
dir, and its in-process model (the reference the sharded and rebalanced paths are compared with)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from moe_runtime.checkpoint.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny-moe")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from moe_runtime.model.load import load_model

    return load_model(tiny_dir)
