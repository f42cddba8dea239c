"""Any string the API server accepts renders to a RayService that carries it unchanged (issue 14 item 13).

jinja2's ``tojson`` escapes a character outside the BMP as a UTF-16 surrogate pair (``\\ud83d\\ude00``), which
YAML rejects: an emoji in ``servedModelName`` left the MoEDeployment without a RayService and without SpecInvalid,
retried every 60 s. YAML also folds raw line separators (U+2028, NEL) inside quoted scalars.
"""
from __future__ import annotations

import pytest
import yaml

from moe_operator.api import MoEDeploymentSpec
from moe_operator.catalog import Catalog
from moe_operator.render import Images, render_for

HOSTILE = ["chat\U0001F600", "\U0010FFFD", "a\u2028b\u2029c\x85d", "tab\there\nnewline", 'q"uo\\te\'s',
           "{{ jinja }} {% x %}", "<script>&amp;", "\ufeffbom", "\x7fdel", "\u00e9\u4e2d\u0416"]


def _spec(engine: str, served: str) -> MoEDeploymentSpec:
    return MoEDeploymentSpec.model_validate({
        "model": {"source": "builtin://tiny-moe", "architecture": "tiny", "servedModelName": served},
        "engine": engine,
        "pools": [{"name": "cpu", "accelerator": "cpu", "devicesPerReplica": 1}],
    })


def _served_names(serve_config: dict) -> list[str]:
    """Every occurrence of the served model name in the parsed serveConfigV2 (engine-agnostic walk)."""
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("model_name", "model_id") and isinstance(v, str):
                    found.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(serve_config)
    return found


@pytest.mark.parametrize("engine", ["torch", "vllm"])
@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_served_model_name_round_trips_through_the_rendered_yaml(engine, value):
    rs = render_for("m", "ns", _spec(engine, value), Catalog.default(), None, Images())
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    names = _served_names(serve)
    assert names and all(n == value for n in names), names
