"""Tree rules that keep the layout working: pytest's default import mode needs unique test-module names, and a
top-level operator/__init__.py would shadow the standard library's `operator`."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique():
    names = Counter(p.name for p in (ROOT / "tests").rglob("*.py") if p.name != "conftest.py")
    assert [n for n, c in names.items() if c > 1] == []


def test_operator_dir_is_not_a_package():
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert (ROOT / "operator" / "moe_operator" / "__init__.py").exists()
