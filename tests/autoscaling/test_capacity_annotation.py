"""The capacity annotation is user input: zero, negative, NaN or infinite tokens/s is refused with one clear
sentence (issue 14 item 16). Before, 0 divided by zero in the tick and NaN/inf planned fleets from nonsense."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from moe_operator.api.manifest import parse_manifest
from moe_operator.autoscaling.from_spec import CAPACITY_ANNOTATION, pool_models_from_spec
from moe_operator.errors import UserError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mixtral-8x7b-ascend.yaml"


def _deployment(value):
    doc = yaml.safe_load(EXAMPLE.read_text())
    pool = doc["spec"]["pools"][0]["name"]
    cap = {"prefillTps": 10000, "decodeTps": 1000, "cachedPrefillTps": 100000}
    cap.update(value)
    doc["metadata"]["annotations"] = {CAPACITY_ANNOTATION: json.dumps({pool: cap})}
    return parse_manifest(doc)


def test_a_sane_annotation_is_used():
    pools, _ = pool_models_from_spec(_deployment({}))
    assert pools[0].capacity == 1000.0


@pytest.mark.parametrize("key", ["prefillTps", "decodeTps", "cachedPrefillTps"])
@pytest.mark.parametrize("bad", [0, -5, "NaN", "Infinity", 1e309, "12"])
def test_a_capacity_that_is_not_a_positive_finite_number_is_refused_clearly(key, bad):
    raw = {key: bad}
    with pytest.raises(UserError) as exc:
        pool_models_from_spec(_deployment(raw))
    msg = str(exc.value)
    assert CAPACITY_ANNOTATION in msg and key in msg and "positive" in msg, msg
