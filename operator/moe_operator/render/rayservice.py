"""RenderInput -> RayService (a dict ready for the Kubernetes API), from templates/rayservice.yaml.j2."""
from __future__ import annotations

from typing import Any

import yaml

from .inputs import PoolRender, RenderInput
from .serve import serve_config
from .templates import env
from .vendor import ray_start_params, worker_env, worker_volumes

LABEL_DEPLOYMENT = "serving.moe-operator.io/deployment"
LABEL_POOL = "serving.moe-operator.io/pool"
MANAGED_BY = {"app.kubernetes.io/managed-by": "moe-operator"}


def _worker(r: RenderInput, pool: PoolRender, labels: dict[str, str]) -> dict[str, Any]:
    resources: dict[str, str] = {"cpu": pool.cpu, "memory": pool.memory}
    if pool.resource_name:
        resources[pool.resource_name] = str(pool.devices_per_pod)
    volumes, mounts = worker_volumes(pool)
    return {
        "pool": pool,
        "labels": {**labels, LABEL_POOL: pool.name},
        "ray_start_params": ray_start_params(pool),
        "env": worker_env(pool, r.engine),
        "volumes": volumes,
        "mounts": mounts,
        "resources": dict(sorted(resources.items())),
    }


def render_rayservice(r: RenderInput) -> dict[str, Any]:
    """The RayService object; the same input always gives the same object (golden-tested)."""
    labels = {**MANAGED_BY, **r.labels, LABEL_DEPLOYMENT: r.name}
    text = env().get_template("rayservice.yaml.j2").render(
        r=r,
        labels=dict(sorted(labels.items())),
        serve_config=serve_config(r),
        workers=[_worker(r, p, labels) for p in r.pools],
    )
    return yaml.safe_load(text)
