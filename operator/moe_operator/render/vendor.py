"""Vendor-specific pieces of a worker pod: Ray start parameters, process environment, host mounts.

KubeRay v1.5.0 maps only ``nvidia.com/gpu`` (num-gpus), ``google.com/tpu`` (TPU) and
``aws.amazon.com/neuroncore`` (neuron_cores) from container limits to Ray resources
(``customAcceleratorToRayResourceMap`` in ray-operator/controllers/ray/common/pod.go), so Ascend workers advertise an
``NPU`` custom resource themselves; every worker also advertises ``pool-<name>: 1`` so that Serve deployments can
target one pool. KubeRay passes ``rayStartParams.resources`` to ``ray start --resources=<value>`` through a
shell, so the value carries its own double quotes around the JSON: ``'"{\\"NPU\\": 8, \\"pool-a\\": 1}"'``
(KubeRay docs, "rayStartParams"; ray-operator/controllers/ray/common/pod.go).
"""
from __future__ import annotations

import json

from .inputs import PoolRender


def ray_resources_param(resources: dict[str, float]) -> str:
    """The ``rayStartParams.resources`` string in KubeRay's quoting convention (sorted keys: deterministic)."""
    return '"' + json.dumps(dict(sorted(resources.items()))).replace('"', '\\"') + '"'


def ray_start_params(pool: PoolRender) -> dict[str, str]:
    """``rayStartParams`` of a worker group: device counts Ray schedules on, plus the pool resource."""
    custom: dict[str, float] = {pool.pool_resource: 1}
    params: dict[str, str] = {}
    if pool.vendor == "nvidia":
        params["num-gpus"] = str(pool.devices_per_pod)
    elif pool.vendor == "huawei":
        custom["NPU"] = pool.devices_per_pod
    params["resources"] = ray_resources_param(custom)
    return params


def worker_env(pool: PoolRender, engine: str) -> list[dict[str, str]]:
    """Process environment of a worker container, sorted by name (deterministic output)."""
    env: dict[str, str] = {"MOE_POOL": pool.name, "MOE_ACCELERATOR": pool.accelerator}
    if pool.vendor == "nvidia":
        env.update({
            "NCCL_DEBUG": "WARN",
            "NCCL_SOCKET_IFNAME": "eth0",          # pod network; RDMA NICs come with the cluster's own setup
            "NCCL_CUMEM_ENABLE": "0",
        })
    elif pool.vendor == "huawei":
        env.update({
            # Devices the device plugin gave the container, renumbered 0..n-1 inside it.
            "ASCEND_RT_VISIBLE_DEVICES": ",".join(str(i) for i in range(pool.devices_per_pod)),
            "HCCL_CONNECT_TIMEOUT": "1200",
            "HCCL_EXEC_TIMEOUT": "1200",
            "HCCL_SOCKET_IFNAME": "eth0",
            "GLOO_SOCKET_IFNAME": "eth0",
            "TP_SOCKET_IFNAME": "eth0",
        })
        if engine == "vllm":
            env["VLLM_PLUGINS"] = "ascend"          # vllm-ascend registers itself as a vLLM platform plugin
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


# Host paths the Ascend container runtime expects (driver, DCMI, npu-smi), mounted read-only.
ASCEND_HOST_PATHS = (
    ("ascend-driver", "/usr/local/Ascend/driver"),
    ("ascend-dcmi", "/usr/local/dcmi"),
    ("ascend-npu-smi", "/usr/local/bin/npu-smi"),
)


def worker_volumes(pool: PoolRender) -> tuple[list[dict], list[dict]]:
    """(volumes, volumeMounts) of a worker pod: /dev/shm for collectives, Ascend driver mounts."""
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if pool.vendor == "huawei":
        for name, path in ASCEND_HOST_PATHS:
            volumes.append({"name": name, "hostPath": {"path": path}})
            mounts.append({"name": name, "mountPath": path, "readOnly": True})
    return volumes, mounts
