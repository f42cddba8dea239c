"""The first expert placement of a pool, before any traffic is seen: uniform loads through the EPLB balancer.

One shard per expert-parallel rank; a shard spans ``expert_tensor_parallel`` devices (its Ray resources ask for that
many). Output is the placement JSON of docs/contracts.md section 2.
"""
from __future__ import annotations

from typing import Any

from moe_operator.catalog import TORCH_DEVICE, Accelerator
from moe_operator.planning.model import ModelFacts
from moe_operator.planning.parallelism import NODE_DEVICES, Parallelism
from moe_operator.planning.placement import Device, static_placement, to_placement_json


def shard_devices(par: Parallelism, accelerator: Accelerator, redundant_slots: int = 0) -> list[Device]:
    """The expert shards of one replica; shards on the same node (NODE_DEVICES devices) share a node id."""
    ep = par.expert_parallel
    slots = par.experts_per_shard + -(-redundant_slots // ep)  # room for the redundant copies, spread evenly
    return [
        Device(
            name=f"shard-{i}",
            slots=slots,
            node=(i * par.expert_tensor_parallel) // NODE_DEVICES,
            device_type=TORCH_DEVICE[accelerator.vendor],
            ray_resources={accelerator.ray_resource: float(par.expert_tensor_parallel)},
        )
        for i in range(ep)
    ]


def initial_placement(
    facts: ModelFacts, par: Parallelism, accelerator: Accelerator, redundant_slots: int = 0
) -> dict[str, Any]:
    """Placement JSON: every expert once per shard group, balanced (equal experts per shard).

    One entry for all layers.
    """
    devices = shard_devices(par, accelerator, redundant_slots)
    placement = static_placement(facts.num_moe_layers, facts.num_experts, devices, redundant_slots)
    return to_placement_json(placement)
