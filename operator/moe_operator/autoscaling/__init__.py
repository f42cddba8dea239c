"""Cost-aware autoscaler: sources -> observation -> policy -> limits -> actuator (see docs/autoscaling.md).

Everything here except ``sources`` is pure: numbers in, numbers out.
"""
from .model import PoolModel, Settings, WorkWeights, TOKEN_KINDS
from .observation import Observation
from .policy import Condition, Decision, History, decide

__all__ = [
    "PoolModel",
    "Settings",
    "WorkWeights",
    "TOKEN_KINDS",
    "Observation",
    "Condition",
    "Decision",
    "History",
    "decide",
]
