"""Ray Serve's side of our routing: the engine deployments' request router (docs/routing.md).

The ingress decides which replica serves a request (``moe_runtime.routing``) and names it in the call's
``route_to`` keyword. ``HintRouter``, the engine deployments' Ray Serve request router, honours that name: it
offers the named replica alone for the first few routing rounds and then, if that replica is gone or refuses,
Serve's own choice (power of two) beside it, so a stale hint costs a few probes, never a lost request.

Serve builds one router per deployment handle, in the process that holds the handle (the ingress replica), and
tells it the deployment's running replicas (``update_replicas``). ``HintRouter`` publishes that set here, per
(app, deployment), so the ingress routes among replicas that exist, and knows a pool is at zero (an empty set)
as soon as Serve does: no polling of the controller.
"""
from __future__ import annotations

import asyncio
import importlib
import time
from typing import List, Optional

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

try:  # the router Serve uses by default; its mixins keep Serve's FIFO, locality and probing behaviour
    from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter as _Base
except ImportError:  # pragma: no cover (older Ray)
    from ray.serve.request_router import RequestRouter as _Base

ROUTE_KWARG = "route_to"
HINT_TRIES = 3  # routing rounds that offer only the chosen replica (probe deadlines 0.1 + 0.2 + 0.4 s at most)

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
    """Record a replica set in the module the ingress reads: ``sys.modules``'s, not this function's globals.
    Serve pickles the router class by value, so its methods run over a copy of this module's globals, a fresh
    one on every call."""
    home = importlib.import_module(__name__)
    if home._live.get((app, deployment)) != ids:
        home._live[(app, deployment)] = ids
        home._version += 1


class HintRouter(_Base):
    """Offer the replica the ingress chose (``route_to``) first, then Serve's own choice (power of two)."""

    def _fulfill_next_pending_request(self, replica: RunningReplica, request_metadata=None) -> None:
        """Hand ``replica`` to the request it was chosen for.

        Not FIFO: the power-of-two router's FIFO mixin hands a chosen replica to the oldest pending request, so
        under load request A's hinted replica would serve B. Not by internal request id alone either (Serve's
        RequestRouter): calls a replica makes while it handles one request share that request's id, Serve's id
        index keeps only the first of them, and the others were never handed a replica. /metrics asks each pool
        for 2n+2 snapshots at once, so all but one waited out SNAPSHOT_S (5 s) on every scrape, which was
        ``moectl up``'s scrape timeout then: its autoscaler saw no metrics under load. Serve passes the routed
        request's own metadata object (``_fulfill_pending_requests``), so identity finds it."""
        queue = getattr(self, "_pending_requests_to_fulfill", None)
        helpers = [getattr(self, n, None) for n in ("_cancel_routing_task_for_pending_request",
                                                     "_record_queue_wait_time", "_remove_pending_request_from_indices")]
        if request_metadata is None or queue is None or not all(helpers):   # another Ray: its own exact match
            RequestRouter._fulfill_next_pending_request(self, replica, request_metadata)
            return
        cancel_task, record_wait, unindex = helpers
        for pr in queue:
            if pr.metadata is request_metadata and not pr.future.done():
                cancel_task(pr)
                record_wait(pr)
                pr.future.set_result(replica)
                unindex(pr)
                return
        # Its own request was cancelled meanwhile: give the replica to nobody (a sibling with the same id has its
        # own routing task, and perhaps another hint), rather than to whichever request Serve's id index holds.

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        super().update_replicas(replicas)
        dep = self._deployment_id
        _publish(dep.app_name, dep.name, sorted(r.replica_id.unique_id for r in replicas))

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        want = pending_request.kwargs.get(ROUTE_KWARG) if pending_request is not None else None
        hinted = [r for r in candidate_replicas if want is not None and r.replica_id.unique_id == want]
        if hinted:
            # Serve probes a replica's queue length with a deadline (0.1 s, doubling on each round): on a busy
            # node the chosen replica can miss it, and a ranking that offered others beside it would send the
            # request elsewhere (its prefix cache lost). The first HINT_TRIES rounds offer the chosen one alone.
            # Counted on the call's own PendingRequest (Serve keeps its per-call routing state there too): calls
            # that share an internal request id (one HTTP request's calls) would share a count keyed by it.
            n = pending_request.__dict__.get("_moe_hint_rounds", 0) + 1
            pending_request._moe_hint_rounds = n
            if n <= HINT_TRIES:
                return [hinted]
        fallback = await super().choose_replicas(candidate_replicas, pending_request)
        return [hinted, *fallback] if hinted else fallback
