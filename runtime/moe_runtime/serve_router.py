"""Ray Serve's side of our routing: the engine deployments' request router (docs/routing.md).

The ingress decides which replica serves a request (``moe_runtime.routing``) and names it in the call's
``route_to`` keyword. ``HintRouter``, the engine deployments' Ray Serve request router, honours that name: it
offers the named replica first and, if that replica is gone or refuses, two random others (Serve's power of two
choices), so a stale hint costs one probe, never a lost request.

Serve builds one router per deployment handle, in the process that holds the handle (the ingress replica), and
tells it the deployment's running replicas (``update_replicas``). ``HintRouter`` publishes that set here, per
(app, deployment), so the ingress routes among replicas that exist, and knows a pool is at zero (an empty set)
as soon as Serve does: no polling of the controller.
"""
from __future__ import annotations

import asyncio
import time
from typing import List, Optional

from ray.serve.request_router import PendingRequest, RunningReplica

try:  # the router Serve uses by default; its mixins keep Serve's FIFO, locality and probing behaviour
    from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter as _Base
except ImportError:  # pragma: no cover (older Ray)
    from ray.serve.request_router import RequestRouter as _Base

ROUTE_KWARG = "route_to"

# (app, deployment) -> ids of its running replicas, as Serve says. Written by the routers (Serve runs them in its
# own event loop thread), read by the ingress: whole-value assignments only, so no lock is needed.
_live: dict[tuple[str, str], list[str]] = {}
_version = 0  # bumped on every change of _live
POLL_S = 0.05


def live_replicas(app: str, deployment: str) -> list[str] | None:
    """The running replicas of ``deployment`` (their unique ids: ``serve.get_replica_context().replica_tag`` in
    the replica), or None before this process's router for it has heard from Serve."""
    ids = _live.get((app, deployment))
    return None if ids is None else list(ids)


async def wait_for_change(timeout_s: float) -> None:
    """Return when any deployment's replica set changes, or after ``timeout_s`` (the routers run in another
    thread, so this polls a version counter every POLL_S instead of sharing an asyncio event across loops)."""
    seen, end = _version, time.monotonic() + timeout_s
    while _version == seen and time.monotonic() < end:
        await asyncio.sleep(min(POLL_S, max(0.0, end - time.monotonic())))


def _publish(app: str, deployment: str, ids: list[str]) -> None:
    global _version
    if _live.get((app, deployment)) != ids:
        _live[(app, deployment)] = ids
        _version += 1


class HintRouter(_Base):
    """Offer the replica the ingress chose (``route_to``) first, then Serve's own choice (power of two)."""

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        super().update_replicas(replicas)
        dep = self._deployment_id
        _publish(dep.app_name, dep.name, sorted(r.replica_id.unique_id for r in replicas))

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        want = pending_request.kwargs.get(ROUTE_KWARG) if pending_request is not None else None
        hinted = [r for r in candidate_replicas if want is not None and r.replica_id.unique_id == want]
        fallback = await super().choose_replicas(candidate_replicas, pending_request)
        return [hinted, *fallback] if hinted else fallback
