"""Each example renders to exactly its golden RayService (tests/render/golden/<example>.yaml).

Regenerate after an intended change with ``MOE_UPDATE_GOLDENS=1 pytest tests/render/test_golden.py`` and review
the diff: a golden change is a change of what the operator applies to every cluster.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from moe_operator.api import load_manifest
from moe_operator.catalog import Catalog
from moe_operator.render import Images, dump
from moe_operator.render.pipeline import plan_and_render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"


def render_example(path: Path, namespace: str = "default") -> dict:
    m = load_manifest(path)
    return plan_and_render(m.metadata.name, namespace, m.spec, Catalog.default(), Images()).rayservice


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_matches_golden(example: Path):
    text = dump(render_example(example))
    golden = GOLDEN / f"{example.stem}.yaml"
    if os.environ.get("MOE_UPDATE_GOLDENS"):
        golden.write_text(text)
    assert golden.exists(), f"no golden for {example.name}; run with MOE_UPDATE_GOLDENS=1 and review it"
    assert text == golden.read_text(), f"{example.name} renders differently from {golden.name}"


def test_every_example_has_a_golden_and_no_golden_is_orphaned():
    assert {p.stem for p in EXAMPLES} == {p.stem for p in GOLDEN.glob("*.yaml")}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_render_is_deterministic_and_round_trips(example: Path):
    a, b = render_example(example), render_example(example)
    assert a == b
    assert yaml.safe_load(dump(a)) == a
