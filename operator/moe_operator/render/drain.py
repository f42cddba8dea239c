"""How long a scale-down may take to drain an engine replica (issue 13, drain-aware scale-down). Pure.

The drain formula has one owner, moe_runtime/drain.py (torch-free; the operator image installs moe_runtime without
torch or ray, images/operator.Dockerfile): the render, ``moectl up`` and the Serve app all use it. This module adds
what only the render needs: the worker pods' termination grace period.
"""
from __future__ import annotations

from moe_runtime.drain import (DEFAULT_SECONDS_PER_TOKEN, MARGIN_S, MAX_DRAIN_S, TAIL_FACTOR,  # noqa: F401
                               drain_timeout_s)

POD_MARGIN_S = 30    # a worker pod outlives its replicas' drain by this much (Ray's own shutdown)

# terminationGracePeriodSeconds of every worker pod: above every drain the formula can give (MAX_DRAIN_S), so
# Kubernetes never SIGKILLs a pod while a Serve replica on it may still drain. A constant, not the spec's own drain:
# the pod template is in the hash by which KubeRay decides to start a second Ray cluster, so a value that followed
# the TPOT target or maxContextTokens would turn an SLO edit into a whole new cluster. It is a ceiling, not a wait:
# a pod whose processes exit sooner is gone sooner.
WORKER_TERMINATION_GRACE_S = MAX_DRAIN_S + POD_MARGIN_S
