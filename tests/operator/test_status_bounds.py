"""Messages the operator writes fit the schema's bounds, and a bad spec's Warning goes out once (issue 14 item 13).

A SpecInvalid message that quotes a 40 KB value was written whole: the status patch failed with 422 against the
condition's maxLength (32768), the old status never changed, and so ``_new_problem`` posted the Warning again on
every retry.
"""
from __future__ import annotations

from moe_operator.api.status import Condition
from moe_operator.handlers import status
from moe_operator.handlers.reconcile import reconcile


def _body(model_type: str, old_status: dict | None = None) -> dict:
    return {"metadata": {"name": "m", "namespace": "ns", "generation": 1, "uid": "u"},
            "spec": {"model": {"source": "hf://o/m", "config": {"model_type": model_type}}, "engine": "torch",
                     "pools": [{"name": "cpu", "accelerator": "cpu"}]},
            "status": old_status or {}}


def test_a_huge_message_is_cut_to_the_condition_bound_and_says_so():
    st = status.invalid_status({}, 1, "UnsupportedModel", "x" * 100_000)
    for c in st["conditions"]:
        Condition.model_validate(c)            # the generated CRD schema's bounds, checked the same way
    msg = next(c["message"] for c in st["conditions"] if c["type"] == "SpecInvalid")
    assert len(msg) <= status.MESSAGE_MAX and msg.endswith(status.CUT)


def test_a_bad_spec_quoting_a_huge_value_gets_one_warning_not_one_per_retry():
    first = reconcile(_body("x" * 40_000))
    assert [e[1] for e in first.events] == ["UnsupportedModel"]
    for c in first.status["conditions"]:
        Condition.model_validate(c)
    again = reconcile(_body("x" * 40_000, first.status))
    assert again.events == []
