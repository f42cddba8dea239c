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
    from require import need

    import ray

    for attempt in range(3):  # on a loaded host the raylet can miss Ray's fixed 30 s start-up wait
        try:
            ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
            break
        except Exception as e:  # pragma: no cover - depends on the machine
            ray.shutdown()
            if attempt == 2:
                need("ray", f"ray.init failed 3 times: {e}")
    yield ray
    ray.shutdown()
