"""The MoEDeployment API (group serving.moe-operator.io, version v1alpha1): pydantic models, the source of truth."""
from .spec import (
    AutoscalingSpec,
    BudgetSpec,
    CacheSpec,
    DiskTierSpec,
    MetricsSpec,
    ModelSpec,
    MoEDeploymentSpec,
    PoolSpec,
    ScaleToZeroSpec,
    ServingSpec,
    SloSpec,
    Toleration,
)
from .status import Condition, Decision, MoEDeploymentStatus, PlacementStatus, PoolStatus
from .manifest import GROUP, KIND, PLURAL, SHORT_NAME, VERSION, API_VERSION, MoEDeployment, load_manifest

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "SHORT_NAME", "VERSION",
    "AutoscalingSpec", "BudgetSpec", "CacheSpec", "Condition", "Decision", "DiskTierSpec", "MetricsSpec",
    "ModelSpec", "MoEDeployment", "MoEDeploymentSpec", "MoEDeploymentStatus", "PlacementStatus", "PoolSpec",
    "PoolStatus", "ScaleToZeroSpec", "ServingSpec", "SloSpec", "Toleration", "load_manifest",
]
