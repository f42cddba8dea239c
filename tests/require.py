"""Skip-or-fail for tests that need a real component (control plane, Prometheus, Ray).

On a developer laptop a missing component skips the test with the reason; under ``CI=true`` it
fails, so a CI run can never go green by skipping what it was meant to prove.
"""
from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def need(component: str, why: str) -> None:
    """Stop the current test because ``component`` is unavailable: fail in CI, skip elsewhere."""
    message = f"{component} unavailable: {why}"
    if in_ci():
        pytest.fail(message + " (CI=true: a missing component is a failure, not a skip)", pytrace=False)
    pytest.skip(message)
