"""Shared fixtures: the tiny checkpoint generated once per session into a temp dir; torch on one thread
(the CI machine's cores are shared, and OpenMP spinning under contention makes small matmuls 20x slower)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from tiny_model_fixtures import tiny, tiny_dir  # noqa: E402,F401  (shared session fixtures)
