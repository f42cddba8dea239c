"""spec dict -> validated spec -> plan -> RayService: the one code path of the operator and ``moectl``.

Every way a spec can be unservable surfaces here as ``SpecInvalid`` (with a CamelCase reason) before anything
is rendered, so callers create nothing for a bad spec.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import ValidationError

from moe_operator.api import MoEDeploymentSpec
from moe_operator.api.manifest import format_validation_error
from moe_operator.errors import SpecInvalid
from moe_operator.planning import DeploymentPlan, plan_deployment

from . import render_for
from .images import Images


@dataclass
class Rendered:
    spec: MoEDeploymentSpec
    plan: DeploymentPlan
    rayservice: dict[str, Any]


def parse_spec(raw: Mapping[str, Any]) -> MoEDeploymentSpec:
    """The spec model; schema errors (only possible when the API server did not validate) become SpecInvalid."""
    try:
        return MoEDeploymentSpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise SpecInvalid(f"spec is invalid: {format_validation_error(exc)}", reason="SchemaInvalid") from None


def plan_and_render(name: str, namespace: str, raw_spec: Mapping[str, Any] | MoEDeploymentSpec, catalog: Any,
                    images: Images | None = None, replicas: Mapping[str, int] | None = None) -> Rendered:
    spec = raw_spec if isinstance(raw_spec, MoEDeploymentSpec) else parse_spec(raw_spec)
    p = plan_deployment(spec, catalog, name)   # raises SpecInvalid when the spec cannot be served
    return Rendered(spec, p, render_for(name, namespace, spec, catalog, p, images, replicas))
