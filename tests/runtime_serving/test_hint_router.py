"""serve_router.HintRouter's own bookkeeping, without a Serve cluster: how many rounds a call is offered only the
replica the ingress named. test_router_on_serve.py runs it inside real Ray Serve."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.serve")

from ray.serve.request_router import PendingRequest  # noqa: E402

from moe_runtime.serve_router import HINT_TRIES, ROUTE_KWARG, HintRouter  # noqa: E402


def _replica(rid: str):
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=rid))


def test_calls_that_share_a_request_id_each_get_their_own_hint_rounds(monkeypatch):
    """Calls a replica makes while handling one request share Serve's internal request id (the defect
    29e2fc2 fixed in the hand-over). The hint rounds are counted per call: a sibling's rounds must not use up
    this call's, or it is offered Serve's own choice early and loses the replica (and prefix cache) it was
    routed to."""
    router = object.__new__(HintRouter)   # choose_replicas' hinted branch touches no Serve state
    replicas = [_replica("r1"), _replica("r2"), _replica("r3")]
    base_rounds = []

    async def fallback(self, candidates, pending_request=None):   # Serve's own choice: recorded, never expected
        base_rounds.append(pending_request.kwargs[ROUTE_KWARG])
        return [candidates]

    async def go():
        meta = SimpleNamespace(internal_request_id="one-http-request", request_id="x")
        calls = [PendingRequest(args=[], kwargs={ROUTE_KWARG: rid}, metadata=meta) for rid in ("r1", "r2")]
        offered = {rid: [] for rid in ("r1", "r2")}
        for _ in range(HINT_TRIES):
            for call in calls:   # interleaved rounds, as two routing tasks do
                rid = call.kwargs[ROUTE_KWARG]
                offered[rid].append([[r.replica_id.unique_id for r in rank]
                                     for rank in await router.choose_replicas(replicas, call)])
        return offered

    monkeypatch.setattr(HintRouter.__mro__[1], "choose_replicas", fallback)
    offered = asyncio.run(go())
    assert base_rounds == [], f"Serve's own choice was offered early to {base_rounds}"
    assert offered == {"r1": [[["r1"]]] * HINT_TRIES, "r2": [[["r2"]]] * HINT_TRIES}
