"""Cross-field rules written once, enforced twice.

Each rule is a CEL expression the API server evaluates (``x-kubernetes-validations`` in the CRD) and a
Python predicate pydantic evaluates (``moectl plan`` offline, the operator on resume), with one message,
so a person sees the same sentence whichever door the spec came through.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    cel: str
    message: str
    check: Callable[[Any], bool]


def _emit_rules(schema: dict[str, Any], cls: type) -> None:
    rules = getattr(cls, "RULES", ())
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]


class ApiModel(BaseModel):
    """Base of every spec/status object: camelCase on the wire, unknown fields rejected, rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_emit_rules,
        use_attribute_docstrings=False,
    )
    RULES: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self):
        for rule in type(self).RULES:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self
