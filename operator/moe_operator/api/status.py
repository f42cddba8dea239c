"""The MoEDeployment status: what the operator and autoscaler report back.

Status is written by the operator only; the schema is generated like the spec's so the API server keeps
exactly these fields (unknown ones would be pruned).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .rules import ApiModel

ConditionType = Literal["Ready", "Progressing", "Degraded", "BudgetLimited", "SpecInvalid"]


class Condition(ApiModel):
    """A standard Kubernetes condition (metav1.Condition shape)."""

    type: ConditionType = Field(description="Ready, Progressing, Degraded, BudgetLimited or SpecInvalid.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase machine-readable reason.")
    message: str = Field(default="", max_length=32768, description="A sentence a person can act on.")
    last_transition_time: Optional[str] = Field(default=None, description="RFC 3339 time the status last changed.")
    observed_generation: Optional[int] = Field(default=None, description="metadata.generation this condition is about.")


class PoolStatus(ApiModel):
    """Replicas and economics of one pool."""

    name: str = Field(description="Pool name.")
    accelerator: str = Field(default="", description="Catalog key of the pool's accelerator.")
    desired_replicas: int = Field(default=0, description="Replicas the operator asks for.")
    ready_replicas: int = Field(default=0, description="Replicas serving (from the RayCluster's worker group).")
    cost_per_hour: float = Field(default=0.0, description="US$ per hour at desired replicas.")
    capacity_tokens_per_second: float = Field(default=0.0, description="Planned weighted tokens/s per replica.")


class PlacementStatus(ApiModel):
    """Summary of where the experts live."""

    shards: int = Field(default=0, description="Expert shards (devices) per replica.")
    experts_per_shard: str = Field(default="", description="Experts per shard, e.g. '32' or '32-33'.")
    redundant_slots: int = Field(default=0, description="Extra expert copies for hot experts.")
    imbalance: Optional[float] = Field(default=None, description="Max/mean device load of the last placement.")


class Decision(ApiModel):
    """One autoscaler decision, kept in a bounded history."""

    time: str = Field(description="RFC 3339 time of the decision.")
    replicas: dict[str, int] = Field(default_factory=dict, description="Desired replicas per pool.")
    reason: str = Field(default="", max_length=2048, description="Why, in words.")


RebalanceReason = Literal["Waiting", "Rebalancing", "Rebalanced", "Balanced", "NoTraffic", "Unreachable",
                          "AdminDisabled", "Unauthorized", "Failed"]


class RebalanceStatus(ApiModel):
    """The live rebalancer's word on one pool, written only on a move, its completion or a new kind of reason."""

    pool: str = Field(description="Pool name.")
    reason: RebalanceReason = Field(
        description="Waiting (first load window), Rebalancing (new placement posted, replicas converging), "
        "Rebalanced (every replica runs it), Balanced (no move worth its gain), NoTraffic, Unreachable (runtime "
        "admin API not reachable), AdminDisabled (admin API off: 404), Unauthorized (401: token mismatch), Failed.",
    )
    message: str = Field(default="", max_length=2048, description="Why, in words.")
    time: str = Field(description="RFC 3339 time of this word.")
    placement_id: Optional[str] = Field(default=None, description="Id of the pool's desired placement (runtime's).")
    imbalance_before: Optional[float] = Field(
        default=None,
        description="MoE step time over the ideal step under the window's loads, current placement (1.0 = even).",
    )
    imbalance_after: Optional[float] = Field(default=None, description="The same for the balanced placement.")
    gain: Optional[float] = Field(default=None, description="1 - after/before step time, a fraction.")
    last_rebalance_time: Optional[str] = Field(default=None, description="RFC 3339 time the last rebalance was posted.")
    replicas_applied: Optional[int] = Field(default=None, description="Replicas running the desired placement.")
    replicas_total: Optional[int] = Field(
        default=None, description="Replicas reporting to the runtime's placement board."
    )


class MoEDeploymentStatus(ApiModel):
    """Observed state."""

    observed_generation: Optional[int] = Field(default=None, description="Last metadata.generation reconciled.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing, Degraded, BudgetLimited, SpecInvalid."
    )
    ray_service_name: Optional[str] = Field(default=None, description="The owned KubeRay RayService.")
    pools: list[PoolStatus] = Field(default_factory=list, description="Per-pool replicas and cost.")
    replicas: Optional[str] = Field(
        default=None, description="Ready/desired replicas per pool, e.g. 'h800=2/2 ascend=0/1'."
    )
    ready: Optional[str] = Field(default=None, description="Ready condition status, for printer columns.")
    tokens_per_second: Optional[float] = Field(default=None, description="Observed demand, tokens/s (all kinds).")
    cost_per_hour: Optional[float] = Field(default=None, description="US$ per hour of the desired fleet.")
    cost_per_million_tokens: Optional[float] = Field(default=None, description="US$ per 1M tokens at observed demand.")
    budget_state: Optional[Literal["Ok", "Limited", "NoBudget"]] = Field(
        default=None, description="Ok, Limited (budget binds, demand unmet) or NoBudget (none set)."
    )
    placement: Optional[PlacementStatus] = Field(default=None, description="Expert placement summary.")
    last_decisions: list[Decision] = Field(
        default_factory=list, max_length=20, description="Most recent autoscaler decisions, newest last."
    )
    rebalance: list[RebalanceStatus] = Field(
        default_factory=list, max_length=8, description="Live expert rebalancing per pool (spec.rebalance)."
    )
