"""The placement board's bookkeeping, the engine-side reporter and the admin routes, without Ray.

The board state is pure (the caller passes the clock); the reporter runs against a real asyncio loop with a
stand-in engine and an in-process board (the same ``BoardState`` the actor wraps); the admin routes run on
FastAPI's test client over an in-process backend. The Ray Serve path is tested end to end in test_admin_serve.py.
"""
from __future__ import annotations

import asyncio
import copy
import threading

import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from moe_runtime.admin_api import mount_admin_routes  # noqa: E402
from moe_runtime.placement_board import INITIAL_ID, BoardClient, BoardReporter, BoardState, placement_id  # noqa: E402
from tiny_model_fixtures import tiny_dir  # noqa: E402,F401  (the tiny checkpoint, generated once per session)

SHARDS = [
    {"name": "shard-0", "device": "cpu", "rayResources": {}},
    {"name": "shard-1", "device": "cpu", "rayResources": {}},
]
P0 = {"numLayers": 2, "numExperts": 4, "shards": SHARDS, "layers": [[[0, 1], [2, 3]]]}
P1 = {"numLayers": 2, "numExperts": 4, "shards": SHARDS, "layers": [[[0, 1, 2], [3, 0]]]}


def rep(replica, pid, tokens, **kw):
    return {"replica": replica, "placementId": pid, "expertTokens": tokens, **kw}


def test_placement_id_is_a_content_hash():
    assert placement_id(P1) == placement_id({**P1, "shards": [dict(s) for s in SHARDS]})
    assert placement_id(P1) != placement_id(P0) and placement_id(P1).startswith("p-") and len(placement_id(P1)) == 18
    # defaults filled before hashing: the same placement written with or without them has one id
    terse = {**P1, "shards": [{"name": "shard-0"}, {"name": "shard-1"}]}
    assert placement_id(terse) == placement_id(P1)
    with pytest.raises(ValueError, match="places no copy of experts \\[3\\]"):
        placement_id({**P1, "layers": [[[0, 1], [2]]]})


def test_a_fresh_board_adopts_the_running_placement_then_hands_out_the_desired_one():
    b = BoardState()
    first = b.report("k", "cpu", rep("r1", INITIAL_ID, [[1, 2, 3, 4]] * 2), now=0.0)
    assert first == {"placementId": None, "placement": None, "needPlacement": True}
    # the next report carries the doc: adopted as desired, nothing to apply
    second = b.report("k", "cpu", rep("r1", INITIAL_ID, [[1, 2, 3, 4]] * 2, placement=P0), now=1.0)
    assert second == {"placementId": INITIAL_ID, "placement": None, "needPlacement": False}
    assert b.set_desired("k", "cpu", "p-1", P1, at=100.0, now=1.5)
    assert b.report("k", "cpu", rep("r1", INITIAL_ID, [[1, 2, 3, 4]] * 2), now=2.0)["placement"] == P1
    # a replica already on it gets the id but no doc
    assert b.report("k", "cpu", rep("r2", "p-1", [[0, 0, 5, 0]] * 2), now=2.0) == \
        {"placementId": "p-1", "placement": None, "needPlacement": False}
    # an older post (another ingress, earlier) does not win over a later one
    assert not b.set_desired("k", "cpu", "p-0", P0, at=50.0, now=2.1)
    assert b.view("k", 2.2)["cpu"]["placementId"] == "p-1"


def test_silent_replicas_drop_out_and_generations_are_separate():
    b = BoardState(live_s=10.0)
    b.report("k", "cpu", rep("r1", INITIAL_ID, [[1]], placement=None), now=0.0)
    b.report("k", "cpu", rep("r2", INITIAL_ID, [[2]], placement=None), now=5.0)
    b.report("k2", "cpu", rep("r9", INITIAL_ID, [[7]], placement=None), now=5.0)
    assert b.ready("k", 9.0) == {"cpu": 2}
    view = b.view("k", 12.0)["cpu"]["replicas"]
    assert [(r["replica"], r["lastReportAge"]) for r in view] == [("r2", 7.0)]
    assert b.ready("k", 12.0) == {"cpu": 1} and b.ready("k2", 12.0) == {"cpu": 1}
    assert b.ready("k", 16.0) == {"cpu": 0}


def test_a_restarted_board_gets_the_posted_placement_back_from_the_ingress_keepalive():
    b = BoardState()  # fresh after a restart: replicas adopt what they run, the ingress restores what it posted
    b.report("k", "cpu", rep("r1", INITIAL_ID, [[1]], placement=P0), now=0.0)
    assert b.view("k", 0.0)["cpu"]["placementId"] == INITIAL_ID
    pid = placement_id(P1)
    assert b.keepalive("k", {"cpu": {"placementId": pid, "placement": P1, "at": 1000.0}}, now=1.0) == {"cpu": pid}
    assert b.report("k", "cpu", rep("r1", INITIAL_ID, [[1]]), now=2.0)["placement"] == P1
    # a keepalive from an ingress that posted earlier than the board's desired one changes nothing
    b.set_desired("k", "cpu", "p-new", P0, at=2000.0, now=3.0)
    b.keepalive("k", {"cpu": {"placementId": pid, "placement": P1, "at": 1000.0}}, now=4.0)
    assert b.view("k", 4.0)["cpu"]["placementId"] == "p-new"


class FakeEngine:
    """expert_load deltas as the engine gives them; apply_placement fails ``fail`` times, then succeeds."""

    def __init__(self, fail: int = 0):
        self.fail, self.applied, self.calls = fail, [], 0

    def expert_load(self):
        return [[1, 0, 2, 0], [0, 3, 0, 0]]

    async def apply_placement(self, doc):
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("shard actor could not start")
        self.applied.append(doc)
        return {"loaded": 1}


class LocalBoard:
    """The actor's methods over one BoardState, with ``.remote`` awaitables like a Ray actor handle."""

    def __init__(self):
        self.state, self.now = BoardState(), 0.0
        outer = self

        class _M:
            def __init__(self, name):
                self.name = name

            def remote(self, *args):
                args = copy.deepcopy(args)  # a Ray call serialises its arguments

                async def call():
                    return getattr(outer.state, self.name)(*args, now=outer.now)
                return call()

        for name in ("report", "set_desired", "keepalive", "view", "ready"):
            setattr(self, name, _M(name))


def test_the_reporter_accumulates_adopts_applies_and_retries_after_a_failure(monkeypatch):
    """The retry backoff runs on the module's monotonic clock, driven here by hand: no wall-clock window to miss."""
    import time
    from types import SimpleNamespace

    import moe_runtime.placement_board as pb

    now = [1000.0]
    monkeypatch.setattr(pb.reporter, "time", SimpleNamespace(monotonic=lambda: now[0], time=time.time))
    monkeypatch.setattr(pb.reporter, "APPLY_BACKOFF_S", (5.0, 20.0))
    board, engine = LocalBoard(), FakeEngine(fail=1)
    r = BoardReporter(engine, "cpu", "r1", "k", lambda: board, P0, period_s=0.01)
    pid = placement_id(P1)

    async def main():
        await r.tick()  # the board asks for the running doc
        await r.tick()  # ... and adopts it
        assert board.state.view("k", 0.0)["cpu"]["placement"] == P0
        board.state.set_desired("k", "cpu", pid, P1, at=1.0, now=0.0)
        await r.tick()
        await r._apply_task  # first attempt fails: reported, the old id stays
        assert r.running_id == INITIAL_ID and "could not start" in r.error
        now[0] += 4.9
        await r.tick()  # inside the backoff: no new attempt
        assert engine.calls == 1
        now[0] += 0.2
        await r.tick()
        await r._apply_task
        assert r.running_id == pid and r.error is None and engine.applied == [P1]
        await r.tick()
        return board.state.view("k", 0.0)["cpu"]["replicas"][0]

    last = asyncio.run(main())
    assert last["placementId"] == pid and last["error"] is None
    assert last["expertTokens"] == [[6, 0, 12, 0], [0, 18, 0, 0]]  # 6 ticks of deltas, cumulative


def test_the_reporter_survives_a_board_that_fails_and_finds_it_again():
    calls = {"n": 0}
    board = LocalBoard()

    def get():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("board not there yet")
        return board

    r = BoardReporter(FakeEngine(), "cpu", "r1", "k", get, P0, period_s=0.01)

    async def main():
        task = asyncio.create_task(r.run())
        for _ in range(1000):   # until its report arrives (two 10 ms periods; 10 s at most on a starved machine)
            if board.state.ready("k", 0.0) == {"cpu": 1}:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(main())
    assert calls["n"] == 2 and board.state.ready("k", 0.0) == {"cpu": 1}


def test_a_replica_never_reports_the_engines_warm_up_tokens(tiny_dir):  # noqa: F811 (the fixture imported above)
    """The engine warms up in its worker thread after ``start()`` returns while the replica's reporter already
    reports (EngineDeployment starts both at once). What it reports must be the requests' routed tokens only: a
    report taken mid-warm-up used to carry the warm-up's tokens and the next one took them back, so a base read in
    between (test_admin_serve's first test, on a busy machine) stayed too high by the warm-up's prefill for good.
    The warm-up is held after its first step here, so the window is hit every time."""
    torch = pytest.importorskip("torch")
    from moe_runtime.engine.api import SamplingParams
    from moe_runtime.engine.core import TorchEngine
    from moe_runtime.model.load import load_model

    torch.set_num_threads(1)
    engine = TorchEngine(load_model(tiny_dir), model_name="tiny-moe")
    model, real = engine.model, engine.model.forward
    stepped, go = threading.Event(), threading.Event()

    def forward(*args, **kwargs):  # the warm-up's first step (its prefill) runs, then waits for the test
        out = real(*args, **kwargs)
        if not stepped.is_set():
            stepped.set()
            go.wait(30)
        return out

    model.forward = forward
    reporter = BoardReporter(engine, "cpu", "r1", "k", LocalBoard, None)

    async def main():
        await engine.start()
        try:
            assert await asyncio.to_thread(stepped.wait, 30)
            assert model.expert_counts.sum() > 0  # the warm-up's tokens are in the model's counters now
            during = (copy.deepcopy(reporter.collect()), engine.stats().expert_tokens)
            go.set()
            async for _ in await engine.generate([5, 6, 7], SamplingParams(max_tokens=3), "req"):
                pass
            return during, reporter.collect()
        finally:
            go.set()
            await engine.stop()

    (reported, stats), after = asyncio.run(main())
    assert sum(map(sum, reported)) == 0 and sum(map(sum, stats)) == 0, (reported, stats)
    assert after == model.expert_counts.tolist() and sum(map(sum, after)) > 0  # the request's tokens, exactly


class MemoryBackend:
    pools, initial, shape = ["cpu"], P0, (2, 4)

    def __init__(self):
        self.posted = []

    async def experts(self):
        return {"pools": {"cpu": {"placementId": INITIAL_ID, "placement": P0, "expertTokens": [[0] * 4] * 2,
                                  "replicas": []}}}

    async def post(self, pool, doc):
        self.posted.append((pool, doc))
        return placement_id(doc)


@pytest.fixture
def admin():
    app = FastAPI()
    backend = MemoryBackend()
    assert mount_admin_routes(app, backend, token="s3cret")
    return TestClient(app), backend


AUTH = {"Authorization": "Bearer s3cret"}


def test_admin_off_without_a_token_and_401_with_a_wrong_one(admin, monkeypatch):
    monkeypatch.delenv("MOE_ADMIN_TOKEN", raising=False)
    off = FastAPI()
    assert not mount_admin_routes(off, MemoryBackend())
    assert TestClient(off).get("/admin/v1/experts", headers=AUTH).status_code == 404
    monkeypatch.setenv("MOE_ADMIN_TOKEN", "  ")
    assert not mount_admin_routes(FastAPI(), MemoryBackend())  # blank = off
    client, backend = admin
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                    {"Authorization": "Bearer s3cret-and-more"}):
        r = client.post("/admin/v1/placement", json={"pool": "cpu", "placement": P1}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert client.get("/admin/v1/experts", headers=headers).status_code == 401
    assert backend.posted == []
    assert client.get("/admin/v1/experts", headers={"authorization": "bearer s3cret"}).status_code == 200


def test_admin_validation(admin):
    client, backend = admin

    def post(body, raw=None):
        r = client.post("/admin/v1/placement", headers=AUTH, **({"content": raw} if raw else {"json": body}))
        return r.status_code, r.json()

    status, body = post({"pool": "cpu", "placement": P1})
    assert status == 202 and body == {"pool": "cpu", "placementId": placement_id(P1)}
    assert backend.posted == [("cpu", P1)]
    cases = [
        (None, b"{not json", 400, "invalid_json"),
        ({"pool": "gpu", "placement": P1}, None, 404, "unknown_pool"),
        ({"pool": "cpu"}, None, 400, "invalid_value"),
        ({"pool": "cpu", "placement": P1, "force": True}, None, 400, "invalid_value"),
        ({"pool": "cpu", "placement": {**P1, "numExperts": 3, "layers": [[[0, 1], [2]]]}}, None, 400,
         "invalid_placement"),
        ({"pool": "cpu", "placement": {**P1, "layers": [[[0, 1], [2]]]}}, None, 400, "invalid_placement"),
        ({"pool": "cpu", "placement": {**P1, "numLayers": 3}}, None, 400, "invalid_placement"),
    ]
    for body_in, raw, want, code in cases:
        status, body = post(body_in, raw)
        assert status == want and body["error"]["code"] == code, (body_in, body)
        assert body["error"]["message"]
    assert "places no copy of experts [3]" in post({"pool": "cpu", "placement": {**P1, "layers": [[[0, 1], [2]]]}})[1][
        "error"]["message"]
    assert "model has 2 x 4" in post({"pool": "cpu", "placement": {
        "numLayers": 2, "numExperts": 3, "shards": SHARDS, "layers": [[[0, 1], [2]]]}})[1]["error"]["message"]
    assert len(backend.posted) == 1


def test_a_board_that_cannot_be_reached_is_503(admin):
    client, backend = admin

    async def down(*_):
        raise ConnectionError("board restarting")

    backend.experts, backend.post = down, down
    for r in (client.get("/admin/v1/experts", headers=AUTH),
              client.post("/admin/v1/placement", headers=AUTH, json={"pool": "cpu", "placement": P1})):
        assert r.status_code == 503 and r.json()["error"]["code"] == "board_unavailable"
        assert "board restarting" in r.json()["error"]["message"] and r.headers["retry-after"] == "5"


def test_a_post_the_board_refuses_is_409_not_202_with_our_id():
    """The board keeps a placement posted later (another ingress): answering 202 with our id would have the
    rebalancer wait for replicas that never move to it."""
    import time

    board = LocalBoard()
    client = BoardClient("k", lambda: board, ["cpu"], P0, (2, 4))
    app = FastAPI()
    assert mount_admin_routes(app, client, token="s3cret")
    http = TestClient(app)
    later = placement_id(P0)
    assert board.state.set_desired("k", "cpu", later, P0, at=time.time() + 3600, now=0.0)
    r = http.post("/admin/v1/placement", headers=AUTH, json={"pool": "cpu", "placement": P1})
    assert r.status_code == 409 and r.json()["error"]["code"] == "placement_superseded", r.text
    assert later in r.json()["error"]["message"]
    assert board.state.view("k", 0.0)["cpu"]["placementId"] == later and client.posted == {}
    # the placement the board holds, posted again, is simply the desired one (202 with its id)
    r = http.post("/admin/v1/placement", headers=AUTH, json={"pool": "cpu", "placement": P0})
    assert r.status_code == 202 and r.json()["placementId"] == later
    # a free pool takes the post and the keepalive will replay it
    board.state = BoardState()
    r = http.post("/admin/v1/placement", headers=AUTH, json={"pool": "cpu", "placement": P1})
    assert r.status_code == 202 and r.json()["placementId"] == placement_id(P1) == client.posted["cpu"]["placementId"]


def test_board_calls_time_out_and_only_an_unreachable_board_is_503(monkeypatch):
    """A board that hangs (restarting) answers 503 within CALL_TIMEOUT_S, so /metrics' ready() cannot hang; a Ray
    actor error is 503 too; a programming error is the 500 it is, not a 503 board_unavailable."""
    import moe_runtime.placement_board as pb

    monkeypatch.setattr(pb.client, "CALL_TIMEOUT_S", 0.2)
    board = LocalBoard()
    client = BoardClient("k", lambda: board, ["cpu"], P0, (2, 4))
    app = FastAPI()
    assert mount_admin_routes(app, client, token="s3cret")
    http = TestClient(app, raise_server_exceptions=False)

    def fail_with(exc):
        async def call():
            if exc is None:
                await asyncio.sleep(60)
            raise exc
        return call

    board.view.remote = lambda *_a: fail_with(None)()  # hangs
    r = http.get("/admin/v1/experts", headers=AUTH)
    assert r.status_code == 503 and "no answer within" in r.json()["error"]["message"], r.text
    board.view.remote = lambda *_a: fail_with(KeyError("placementId"))()
    assert http.get("/admin/v1/experts", headers=AUTH).status_code == 500
    board.ready.remote = lambda *_a: fail_with(None)()

    async def ready():
        with pytest.raises(pb.BoardUnavailable, match="no answer within"):
            await asyncio.wait_for(client.ready(), 5.0)
    asyncio.run(ready())
    ray = pytest.importorskip("ray")
    board.view.remote = lambda *_a: fail_with(ray.exceptions.ActorDiedError())()
    r = http.get("/admin/v1/experts", headers=AUTH)
    assert r.status_code == 503 and r.json()["error"]["code"] == "board_unavailable", r.text


def test_the_board_actor_class_serves_calls_and_exits_when_idle(monkeypatch):
    """The actor's own methods (run here as a plain object) and its idle exit (Ray's exit_actor stubbed). The idle
    timer runs on the module's monotonic clock, driven by hand: calls that keep coming keep it alive however slowly
    this machine runs them, and it exits once the clock passes idle_exit_s after the last call."""
    import time
    from types import SimpleNamespace

    import moe_runtime.placement_board as pb

    ray = pytest.importorskip("ray")
    from moe_runtime.placement_board import PlacementBoard

    now = [1000.0]
    monkeypatch.setattr(pb.actor, "time", SimpleNamespace(monotonic=lambda: now[0], time=time.time))
    exits = []
    monkeypatch.setattr(ray.actor, "exit_actor", lambda: exits.append(True))

    async def main():
        b = PlacementBoard(idle_exit_s=0.05)   # also the watchdog's real sleep between checks
        assert (await b.report("k", "cpu", rep("r1", INITIAL_ID, [[1]], placement=P0)))["placementId"] == INITIAL_ID
        assert await b.set_desired("k", "cpu", "p-1", P1, 10.0)
        assert (await b.view("k"))["cpu"]["placementId"] == "p-1" and await b.ready("k") == {"cpu": 1}
        assert await b.started() > 0
        for _ in range(20):  # 20 keepalives 0.04 board-seconds apart span 0.8 s, 16x the idle time
            now[0] += 0.04
            await b.keepalive("k", {})
            await asyncio.sleep(0.06)   # the watchdog checks in between
        assert not exits, "keepalives did not keep the board alive"
        now[0] += 1.0   # idle from here
        for _ in range(200):   # the watchdog's next check exits (10 s at most on a starved machine)
            if exits:
                break
            await asyncio.sleep(0.05)
        return b

    b = asyncio.run(main())
    assert exits and b._watchdog.done()


def _peak_bytes(fn) -> int:
    """Peak bytes Python allocated while ``fn()`` ran (every thread: the test client's app runs in its own)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


PEAK_BOUND = 64 * 2**20  # a refused post parses at most its own (<= 1 MiB) body; a 1e9-entry set is gigabytes


def _huge_posts():
    """Bodies that name far more than the served model (2 MoE layers x 4 experts) has, or nonsense ids."""
    many_shards = [{"name": f"s{i}"} for i in range(50_000)]  # about 640 KiB: under the 1 MiB body cap
    return {
        "numExperts 1e9": {**P1, "numExperts": 10**9},
        "numExperts 1e9 as a float": {**P1, "numExperts": 1e9},
        "numLayers 1e9 with one layers entry": {**P1, "numLayers": 10**9},
        "50k shards": {**P1, "shards": many_shards, "layers": [[[0, 1, 2, 3]] + [[]] * (len(many_shards) - 1)]},
        "3 layers entries for 2 MoE layers": {**P1, "layers": P1["layers"] * 3},
        "a negative expert id": {**P1, "layers": [[[-1, 0, 1, 2], [3]]]},
        "a negative numLayers": {**P1, "numLayers": -2},
        "an expert id beyond numExperts": {**P1, "layers": [[[0, 1, 2, 10**9], [3]]]},
        "one expert 100k times on one shard": {**P1, "layers": [[[0] * 100_000 + [1, 2], [3]]]},
        "a shard name used twice": {**P1, "shards": [SHARDS[0], SHARDS[0]]},
        "numExperts true": {**P1, "numExperts": True},
    }


def test_a_placement_beyond_the_served_model_is_a_400_before_anything_is_allocated():
    """Issue 14 item 16: every dimension is checked against the served model before the placement is built (the
    old check ran after pydantic had built set(range(numExperts)) and after ``layers * numLayers``); a bad post
    changes nothing on the board."""
    board = LocalBoard()
    client = BoardClient("k", lambda: board, ["cpu"], P0, (2, 4))
    app = FastAPI()
    assert mount_admin_routes(app, client, token="s3cret")
    http = TestClient(app)
    assert http.post("/admin/v1/placement", headers=AUTH, json={"pool": "cpu", "placement": P1}).status_code == 202
    before = copy.deepcopy(board.state.view("k", 0.0)), copy.deepcopy(client.posted)
    for what, doc in _huge_posts().items():
        got = []
        peak = _peak_bytes(lambda: got.append(http.post("/admin/v1/placement", headers=AUTH,
                                                        json={"pool": "cpu", "placement": doc})))
        r = got[0]
        assert r.status_code == 400, (what, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_placement" and err["param"] == "placement" and err["message"], (what, err)
        assert peak < PEAK_BOUND, (what, peak)
        assert (board.state.view("k", 0.0), client.posted) == before, what
    assert "model has 2 x 4" in http.post("/admin/v1/placement", headers=AUTH, json={
        "pool": "cpu", "placement": {**P1, "numExperts": 10**9}}).json()["error"]["message"]


def test_shard_and_copy_counts_are_capped_before_the_placement_is_built():
    """A million shards (no HTTP body carries them; the parser is called directly) and a layer with more copies than
    the cap are refused by counting, before a shard object is built."""
    from moe_runtime import openai_api as oa
    from moe_runtime.admin_api import parse_placement_request
    from moe_runtime.experts.placement import MAX_REDUNDANT_COPIES, MAX_SHARDS

    shards = [{"name": f"s{i}"} for i in range(10**6)]
    doc = {**P1, "shards": shards, "layers": [[[0, 1, 2, 3]] + [[]] * (len(shards) - 1)]}
    errors = []

    def parse():
        try:
            parse_placement_request({"pool": "cpu", "placement": doc}, ["cpu"], (2, 4), P0)
        except oa.APIError as exc:
            errors.append(exc)
    assert _peak_bytes(parse) < 16 * 2**20
    assert errors and errors[0].status == 400 and f"at most {MAX_SHARDS} shards" in str(errors[0].message)
    wide = [{"name": f"s{i}"} for i in range(MAX_SHARDS)]
    every = list(range(8))  # each of 1024 shards holds all 8 experts of an (2 x 8) model: 8192 copies a layer
    copies = {**P1, "numExperts": 8, "shards": wide, "layers": [[every] * MAX_SHARDS]}
    assert 8 * MAX_SHARDS > 8 + MAX_REDUNDANT_COPIES
    with pytest.raises(oa.APIError, match="copies"):
        parse_placement_request({"pool": "cpu", "placement": copies}, ["cpu"], (2, 8), P0)


def test_the_engine_checks_a_placement_against_its_model_before_expanding_it():
    """``engine.apply_placement`` parses with the model's shape: one ``layers`` entry for 1e9 layers is refused,
    not expanded into a 1e9-entry list; the pydantic model refuses 1e9 experts without building range sets."""
    from moe_runtime.experts.placement import ExpertPlacement
    from moe_runtime.placement_board import canonical_placement

    errors = []

    def parse(doc, **kw):
        try:
            ExpertPlacement.parse(doc, **kw)
        except ValueError as exc:
            errors.append(str(exc))

    assert _peak_bytes(lambda: parse({**P1, "numLayers": 10**9}, model=(2, 4))) < 16 * 2**20
    assert "model has 2 x 4" in errors[-1]
    assert _peak_bytes(lambda: parse({**P1, "numExperts": 10**9}, model=(2, 4))) < 16 * 2**20
    assert "model has 2 x 4" in errors[-1]
    assert ExpertPlacement.parse(P1, model=(2, 4)).layers == [[[0, 1, 2], [3, 0]]] * 2

    def canon():
        try:
            canonical_placement({**P1, "numExperts": 10**9})
        except ValueError as exc:
            errors.append(str(exc))
    assert _peak_bytes(canon) < 16 * 2**20
    assert "places no copy of experts [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, ...]" in errors[-1]


def test_a_pool_with_its_own_rendered_placement_shows_it_before_any_report():
    """Pools of one app may shard differently (mixed vendors): GET /admin/v1/experts shows each pool's own rendered
    placement while its replicas have not reported, not the first pool's."""
    board = LocalBoard()
    client = BoardClient("k", lambda: board, ["cpu", "npu"], P0, (2, 4), initial_by_pool={"npu": P1})
    view = asyncio.run(client.experts())["pools"]
    assert view["cpu"]["placement"] == P0 and view["npu"]["placement"] == P1
    assert view["npu"]["placementId"] == INITIAL_ID
