"""The bad-input corpus through the operator's own code path (no cluster): each is caught where the corpus says."""
from __future__ import annotations

import pytest

from bad_specs import CORPUS, bad_spec
from moe_operator.catalog import Catalog
from moe_operator.errors import SpecInvalid
from moe_operator.render.pipeline import plan_and_render


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 25 and len({c[0] for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_spec_is_rejected_with_an_actionable_message(case):
    _, mutate, where, says = case
    with pytest.raises(SpecInvalid) as exc:
        plan_and_render("bad", "ns", bad_spec(mutate), Catalog.default())
    got = "api" if exc.value.reason == "SchemaInvalid" else exc.value.reason
    assert got == where, str(exc.value)
    assert says in str(exc.value)
