"""Shared fixtures: the tiny checkpoint generated once per session into a temp dir; torch on one thread
(the CI machine's cores are shared, and OpenMP spinning under contention makes small matmuls 20x slower)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from moe_runtime.checkpoint.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny-moe")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from moe_runtime.model.load import load_model

    return load_model(tiny_dir)
