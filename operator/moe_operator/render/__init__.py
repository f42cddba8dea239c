"""Render: MoEDeployment (+ plan + catalog) -> the KubeRay RayService that serves it.

``render_for(name, namespace, spec, catalog, plan)`` is what the operator and ``moectl render`` call; the
output is deterministic (golden-tested in tests/render).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from .context import build_render_input
from .images import Images
from .inputs import PoolRender, RenderInput
from .rayservice import LABEL_DEPLOYMENT, LABEL_POOL, render_rayservice
from .serve import dump

if TYPE_CHECKING:
    from moe_operator.api import MoEDeploymentSpec
    from moe_operator.catalog import Catalog
    from moe_operator.planning.plan import DeploymentPlan


def render_for(name: str, namespace: str, spec: MoEDeploymentSpec, catalog: Catalog, plan: DeploymentPlan | None = None,
               images: Images | None = None, replicas: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The RayService object for one MoEDeployment; ``plan`` None renders each replica as one tensor-parallel
    group per host, without planned capacities or placement."""
    return render_rayservice(build_render_input(name, namespace, spec, catalog, plan, images, replicas))


__all__ = ["Images", "LABEL_DEPLOYMENT", "LABEL_POOL", "PoolRender", "RenderInput", "build_render_input",
           "dump", "render_for", "render_rayservice"]
