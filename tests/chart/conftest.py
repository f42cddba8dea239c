"""Fixtures of the chart tests: the helm binary (built by hack/test-binaries.sh) or need()."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chart_tools, whichever directory pytest starts from

from chart_tools import find_helm  # noqa: E402
from require import need


@pytest.fixture(scope="session")
def helm_bin() -> str:
    path = find_helm()
    if not path:
        need("helm", "not built yet: run hack/test-binaries.sh (it builds helm v3 into its cache)")
    return path
