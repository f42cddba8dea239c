"""RenderInput -> RayService (a dict ready for the Kubernetes API), from templates/rayservice.yaml.j2."""
from __future__ import annotations

from typing import Any

from .cache_claims import VOLUME_NAME as CACHE_VOLUME
from .cache_claims import claim_name, has_disk_tier
from .context import ADMIN_TOKEN_KEY
from .drain import WORKER_TERMINATION_GRACE_S
from .fastyaml import load
from .inputs import PoolRender, RenderInput
from .serve import serve_config
from .templates import env
from .vendor import ray_resources_param, ray_start_params, worker_env, worker_volumes
from .vllm_router import head_resources

LABEL_DEPLOYMENT = "serving.moe-operator.io/deployment"
LABEL_POOL = "serving.moe-operator.io/pool"
MANAGED_BY = {"app.kubernetes.io/managed-by": "moe-operator"}


def _worker(r: RenderInput, pool: PoolRender, labels: dict[str, str]) -> dict[str, Any]:
    resources: dict[str, str] = {"cpu": pool.cpu, "memory": pool.memory}
    if pool.resource_name:
        resources[pool.resource_name] = str(pool.devices_per_pod)
    volumes, mounts = worker_volumes(pool)
    extra_volumes, extra_mounts = data_volumes(r, pool.name)
    volumes, mounts = volumes + extra_volumes, mounts + extra_mounts
    return {
        "pool": pool,
        "labels": {**labels, LABEL_POOL: pool.name},
        "ray_start_params": ray_start_params(pool),
        "env": with_admin_token(worker_env(pool, r.engine), r),
        "volumes": volumes,
        "mounts": mounts,
        "resources": dict(sorted(resources.items())),
        # Kubernetes must not SIGKILL a pod while a Serve replica on it may still drain (drain.py)
        "termination_grace_s": WORKER_TERMINATION_GRACE_S,
        # the shared cache claim is written by the runtime's user (RAY_UID): its group owns the volume's files.
        # OnRootMismatch: no recursive chown of a large cache on every start (drivers that ignore fsGroup, such as
        # EFS access points, need the access point's own uid/gid set to it)
        "pod_security": {"fsGroup": RAY_UID, "fsGroupChangePolicy": "OnRootMismatch"} if has_disk_tier(r) else None,
    }


MODEL_MOUNT = "/models"


def data_volumes(r: RenderInput, pool: str) -> tuple[list[dict], list[dict]]:
    """The model PVC (pvc://<claim>/<path> is read at /models/<path>) and, for the torch engine, the pool's shared
    claim of the prefix cache's disk tier (render/cache_claims.py)."""
    volumes: list[dict] = []
    mounts: list[dict] = []
    if r.model_source.startswith("pvc://"):
        claim = r.model_source[len("pvc://"):].split("/", 1)[0]
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
    if has_disk_tier(r):
        volumes.append({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim_name(r.name, pool)}})
        mounts.append({"name": CACHE_VOLUME, "mountPath": r.cache["disk_dir"]})
    return volumes, mounts


def with_admin_token(env: list[dict], r: RenderInput) -> list[dict]:
    """``env`` plus MOE_ADMIN_TOKEN from the admin Secret when rebalancing is on (sorted by name, as worker_env)."""
    if not r.admin_token_secret:
        return env
    token = {"name": "MOE_ADMIN_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": r.admin_token_secret, "key": ADMIN_TOKEN_KEY, "optional": True}}}
    return sorted([*env, token], key=lambda e: e["name"])


RAY_UID = 1000  # user "ray" of Ray's images, which the torch runtime images build on (runtime-cann creates it)


def container_security(r: RenderInput) -> dict[str, Any]:
    """securityContext of every Ray container (issue 14 item 16): no privilege escalation, no capabilities, the
    runtime's default seccomp profile. Only the torch engine's images (images/runtime-*.Dockerfile) are known to
    run as uid 1000, so only they get runAsNonRoot (with runAsUser, since a named USER cannot be verified by the
    kubelet). The vLLM images are left to their own user: quay.io/ascend/vllm-ascend, under our vllm-ascend image,
    runs as root, and runAsNonRoot would keep such a pod from starting."""
    sc: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                          "seccompProfile": {"type": "RuntimeDefault"}}
    if r.engine == "torch":
        sc.update(runAsNonRoot=True, runAsUser=RAY_UID)
    return sc


def head_params(r: RenderInput) -> dict[str, str]:
    """The head's rayStartParams: no CPU, so no task or replica lands there, except the vLLM router, which asks
    for the head's own ``moe-router`` resource (render/vllm_router.py)."""
    params = {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    if head_resources(r):
        params["resources"] = ray_resources_param(head_resources(r))
    return params


def render_rayservice(r: RenderInput) -> dict[str, Any]:
    """The RayService object; the same input always gives the same object (golden-tested)."""
    labels = {**MANAGED_BY, **r.labels, LABEL_DEPLOYMENT: r.name}
    text = env().get_template("rayservice.yaml.j2").render(
        r=r,
        labels=dict(sorted(labels.items())),
        serve_config=serve_config(r),
        head_params=head_params(r),
        head_env=with_admin_token([{"name": "MOE_DEPLOYMENT", "value": r.name}], r),
        workers=[_worker(r, p, labels) for p in r.pools],
        security=container_security(r),
    )
    return load(text)
