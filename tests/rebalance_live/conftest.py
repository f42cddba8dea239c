"""Fixtures: the tiny checkpoint (generated once per session), its in-process model (the reference), a local Ray."""
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


@pytest.fixture(scope="module")
def ray_local():
    from ray_support import start_local_ray

    ray = start_local_ray()
    yield ray
    ray.shutdown()
