"""YAML through libyaml when PyYAML has it (10-20x faster than pure Python; the reconcile parses on every pass)."""
from __future__ import annotations

from typing import Any

import yaml

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load(text: str) -> Any:
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a safe loader (C or Python)
