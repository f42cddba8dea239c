"""Parallelism of one replica: how its devices split attention (tensor x data) and experts (expert x expert-tensor).

Rules (D = devicesPerReplica, E = routed experts):

- experts: expert parallel size ``ep`` = D when D divides E (each device holds E/D whole experts); otherwise the
  largest divisor of D that divides E, with each expert's FFN split by tensor parallelism over the remaining
  ``etp = D / ep`` devices (``etp`` must divide the expert width). No such split:
  SpecInvalid(DevicesDoNotDivideExperts).
- attention: tensor parallel size ``tp`` = the largest divisor of D that is at most ``node_devices`` (tensor
  parallelism across nodes is too slow) and divides the attention heads (and, for grouped KV heads, divides or is a
  multiple of the KV heads); data parallel size ``dp = D / tp`` (DP-attention, as DeepSeek serves V3).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from moe_operator.catalog import DEVICES_PER_NODE
from moe_operator.errors import SpecInvalid
from moe_operator.planning.model import ModelFacts

NODE_DEVICES = DEVICES_PER_NODE["nvidia"]   # per node (HGX / Atlas 800 boards): tensor parallelism stays inside one
MAX_DEVICES = 128           # the API's devicesPerReplica maximum


class Parallelism(BaseModel):
    """Sizes with tensor * data = expert * expert_tensor = devices."""

    model_config = ConfigDict(frozen=True)

    devices: int
    tensor_parallel: int
    data_parallel: int
    expert_parallel: int
    expert_tensor_parallel: int
    experts_per_shard: int       # routed experts each expert-parallel rank holds per MoE layer


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _expert_split(devices: int, facts: ModelFacts) -> tuple[int, int] | None:
    for ep in sorted(_divisors(devices), reverse=True):
        etp = devices // ep
        if facts.num_experts % ep == 0 and facts.expert_intermediate_size % etp == 0:
            return ep, etp
    return None


def _attention_tp(devices: int, facts: ModelFacts, node_devices: int) -> int:
    for tp in sorted(_divisors(devices), reverse=True):
        if tp > node_devices or facts.num_attention_heads % tp:
            continue
        kv = facts.num_kv_heads
        if facts.attention == "gqa" and kv % tp and tp % kv:
            continue
        return tp
    return 1


def valid_device_counts(facts: ModelFacts, limit: int = MAX_DEVICES, whole_nodes: bool = True) -> list[int]:
    """Device counts per replica (1..limit) for which an expert split exists, ascending.

    ``whole_nodes``: only counts a replica can be scheduled with, at most one node or whole nodes
    (multiples of NODE_DEVICES), as render requires; these are what messages suggest.
    """
    return [
        d for d in range(1, limit + 1)
        if _expert_split(d, facts) is not None and (not whole_nodes or d <= NODE_DEVICES or d % NODE_DEVICES == 0)
    ]


def choose_parallelism(devices: int, facts: ModelFacts, node_devices: int = NODE_DEVICES) -> Parallelism:
    """The split of ``devices`` for ``facts`` (rules in the module docstring); SpecInvalid when none exists."""
    if devices < 1:
        raise SpecInvalid(f"devicesPerReplica is {devices}; it must be at least 1", reason="DevicesDoNotDivideExperts")
    split = _expert_split(devices, facts)
    if split is None:
        counts = [d for d in valid_device_counts(facts) if d <= max(2 * devices, 16)]
        raise SpecInvalid(
            f"devicesPerReplica {devices} cannot split {facts.architecture}'s {facts.num_experts} experts: it does not "
            f"divide them and no expert-tensor split divides the expert width {facts.expert_intermediate_size}; "
            f"use one of {', '.join(map(str, counts))} devices per replica",
            reason="DevicesDoNotDivideExperts",
        )
    ep, etp = split
    tp = _attention_tp(devices, facts, node_devices)
    return Parallelism(
        devices=devices,
        tensor_parallel=tp,
        data_parallel=devices // tp,
        expert_parallel=ep,
        expert_tensor_parallel=etp,
        experts_per_shard=facts.num_experts // ep,
    )


def hosts_per_replica(vendor: str, devices_per_replica: int) -> tuple[int, int]:
    """(devices per pod, pods per replica) for a replica of ``devices_per_replica`` devices: a replica needing more
    than a node spans devicesPerReplica / DEVICES_PER_NODE pods (KubeRay numOfHosts), one per node."""
    per_node = DEVICES_PER_NODE[vendor]
    if vendor == "cpu" or devices_per_replica <= per_node:
        return devices_per_replica, 1
    if devices_per_replica % per_node:
        raise SpecInvalid(
            f"devicesPerReplica {devices_per_replica} spans nodes of {per_node} devices unevenly; "
            f"use a multiple of {per_node} (e.g. {per_node * (devices_per_replica // per_node + 1)}) or at most "
            f"{per_node}",
            reason="DevicesDoNotDivide",
        )
    return per_node, devices_per_replica // per_node
