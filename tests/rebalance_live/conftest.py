"""Fixtures: the tiny checkpoint (generated once per session), its in-process model (the reference), a local Ray."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from tiny_model_fixtures import tiny, tiny_dir  # noqa: E402,F401  (shared session fixtures)


@pytest.fixture(scope="module")
def ray_local():
    from ray_support import start_local_ray

    ray = start_local_ray()
    yield ray
    ray.shutdown()
