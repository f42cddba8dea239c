"""The admin API end to end on real Ray Serve: the tiny model with a 2-shard placement, two engine replicas.

One deployment for the module (the app takes about a minute to start on a busy 2-core machine). The token reaches
the ingress the way ``moectl up`` passes it: MOE_ADMIN_TOKEN in the environment of the process that starts Ray,
which the local Ray workers inherit. Checked: per-expert token counts summed over replicas equal the in-process
model's counts for the same work; a posted placement reaches every replica within seconds while streamed requests
decode across it, and every request (made to span the move) returns exactly the in-process greedy text; auth and
bad bodies; ``moe_ready_replicas``. Tests marked ``timing_sensitive`` rely on wall-clock windows (report liveness,
load timeouts, decode outlasting a move); hack/stress.sh runs them under CPU load.
"""
from __future__ import annotations

import json
import threading
import time

import pytest

from require import need
from runtime_serving.serving_support import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

torch = pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

APP = "admin-test"
TOKEN = "admin-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPLICAS = 2
CONTEXT = 512  # max_context_tokens of the app
LONG_TOKENS = 448  # the streams that span the move: prompt (<= 28 tokens) + 448 fit CONTEXT; the greedy text of
#                    every prompt has no EOS that early, so each stream decodes all of them
CLIENTS = 4
PROMPTS = [  # skewed traffic: repetitive prompts route most tokens to a few experts
    "the the the the the the the the the the",
    "hello hello hello hello hello hello",
    "aaaa aaaa aaaa aaaa aaaa aaaa aaaa",
    "1 2 3 4 5 6 7 8 9 10 11 12",
]


def shards(*names):
    return [{"name": n, "device": "cpu", "rayResources": {}} for n in names]


P0 = {"numLayers": 4, "numExperts": 8, "shards": shards("shard-0", "shard-1"), "layers": [[[0, 1, 2, 3, 4, 5], [6, 7]]]}
# the move: same shards (no actor to start), experts spread out, two redundant copies
P1 = {"numLayers": 4, "numExperts": 8, "shards": shards("shard-0", "shard-1"),
      "layers": [[[0, 1, 2, 3, 6], [4, 5, 6, 7, 0]]]}


@pytest.fixture(scope="module")
def tiny_ref():
    """The in-process model on the same checkpoint the app loads (builtin://tiny-moe)."""
    from moe_runtime.checkpoint.tiny import ensure_tiny_checkpoint
    from moe_runtime.model.load import load_model

    torch.set_num_threads(1)
    return load_model(ensure_tiny_checkpoint())


@pytest.fixture(scope="module")
def app():
    try:
        from ray import serve  # noqa: F401

        from moe_runtime import local_serve as local  # noqa: F401
        from moe_runtime.config import RuntimeConfig
    except ImportError as exc:
        need("ray[serve]", str(exc))
    from ray_support import serve_runtime

    cfg = RuntimeConfig(model_name="tiny-moe", model_source="builtin://tiny-moe", device="cpu", placement=P0,
                        pools=[{"name": "cpu", "num_replicas": REPLICAS, "ray_actor_options": {"num_cpus": 0.5}}],
                        max_batch_size=8, max_queue=16, max_context_tokens=CONTEXT, cache={"prefix": False})
    env = {"MOE_ADMIN_TOKEN": TOKEN, "MOE_TORCH_THREADS": "1", "MOE_SHARD_LOAD_TIMEOUT_S": "3"}
    with serve_runtime(APP, cfg, env) as url:   # the env is inherited by the Ray workers
        yield url


def get_experts(base: str) -> dict:
    r = httpx.get(base + "/admin/v1/experts", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["pools"]["cpu"]


def complete(base: str, ids: list[int], max_tokens: int) -> dict:
    r = httpx.post(base + "/v1/completions", timeout=120, json={
        "model": "tiny-moe", "prompt": ids, "max_tokens": max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def reference(model, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """n greedy tokens of the in-process model and the expert counts of the engine's work for them (prefill, then
    the first n-1 generated tokens fed back)."""
    before = model.expert_counts.clone()
    kv = model.new_kv()
    with torch.no_grad():
        logits = model([prompt], [kv])
        out = []
        for i in range(n):
            out.append(int(logits[0].argmax()))
            if i < n - 1:
                logits = model([[out[-1]]], [kv])
    return out, model.expert_counts - before


def text_of(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=True)


@pytest.mark.timing_sensitive  # replicas report within LIVE_S (10 s) and settle within 45 s
def test_expert_counts_sum_over_replicas_and_equal_the_in_process_model(app, tiny_ref):
    assert wait_for(lambda: len(get_experts(app)["replicas"]) == REPLICAS, 60, 0.5), get_experts(app)
    start = get_experts(app)
    assert start["placementId"] == "initial" and start["placement"]["layers"] == P0["layers"]
    assert [r["placementId"] for r in start["replicas"]] == ["initial"] * REPLICAS
    base = torch.tensor(start["expertTokens"])
    expected = torch.zeros_like(base)
    for p in PROMPTS:  # one at a time: each runs alone in its batch, like the reference
        ids = tiny_ref.tokenizer.encode(p)
        body = complete(app, ids, 8)
        n = body["usage"]["completion_tokens"]
        toks, counts = reference(tiny_ref.model, ids, n)
        assert body["choices"][0]["text"] == text_of(tiny_ref.tokenizer, toks)
        expected += counts

    def settled():
        now = get_experts(app)
        return torch.equal(torch.tensor(now["expertTokens"]) - base, expected)

    assert wait_for(settled, 45, 0.5), (torch.tensor(get_experts(app)["expertTokens"]) - base, expected)
    now = get_experts(app)
    summed = sum(torch.tensor(r["expertTokens"]) for r in now["replicas"])
    assert torch.equal(summed, torch.tensor(now["expertTokens"]))
    assert all(0 <= r["lastReportAge"] < 10 and r["error"] is None for r in now["replicas"])
    assert expected.sum() > 0 and expected.max() > 2 * expected.float().mean()  # skewed, as the prompts intend


class _Stream(threading.Thread):
    """One streamed completion (SSE) read chunk by chunk as it arrives, in its own thread.

    ``first`` is set once the first text chunk came (the sequence is prefilled and decoding in an engine), ``done``
    once the chunk with the finish_reason came (the engine finished it); ``times`` holds each text chunk's arrival
    (monotonic). Any failure (status, error event, broken stream) is kept in ``error``; both events are then set."""

    def __init__(self, base: str, ids: list[int], max_tokens: int):
        super().__init__(daemon=True)
        self.base, self.ids, self.max_tokens = base, ids, max_tokens
        self.first, self.done = threading.Event(), threading.Event()
        self.parts: list[str] = []
        self.times: list[float] = []
        self.finish: str | None = None
        self.usage: dict | None = None
        self.error: str | None = None

    def run(self) -> None:
        body = {"model": "tiny-moe", "prompt": self.ids, "max_tokens": self.max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        try:
            with httpx.stream("POST", self.base + "/v1/completions", json=body, timeout=120) as r:
                if r.status_code != 200:
                    raise AssertionError(f"status {r.status_code}: {r.read()!r}")
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        break
                    chunk = json.loads(line[len("data: "):])
                    if "error" in chunk:
                        raise AssertionError(f"error event: {chunk}")
                    if chunk.get("usage"):
                        self.usage = chunk["usage"]
                    for choice in chunk["choices"]:
                        self.parts.append(choice["text"])
                        self.times.append(time.monotonic())
                        self.first.set()
                        if choice["finish_reason"] is not None:
                            self.finish = choice["finish_reason"]
                            self.done.set()
            if self.finish is None or self.usage is None:
                raise AssertionError(f"stream ended without a finish_reason and usage ({len(self.parts)} chunks)")
        except Exception as exc:  # noqa: BLE001 (recorded; the test fails on it)
            self.error = repr(exc)
        finally:
            self.first.set()
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(self.parts)


def routed_tokens(replica: dict) -> int:
    return sum(sum(row) for row in replica["expertTokens"])


@pytest.mark.timing_sensitive  # needs LONG_TOKENS of decode to outlast the move (both checked below, not assumed)
def test_a_posted_placement_reaches_every_replica_while_requests_stream_unchanged(app, tiny_ref):
    """The overlap is made, not hoped for: CLIENTS streamed requests of LONG_TOKENS are all decoding (first chunk
    received) before the placement is posted; nothing else is sent until they end. Afterwards two witnesses say that
    they were in flight across the move: a stream still open when every replica reported the new placement (client
    side), and tokens routed on a replica after its report of the new placement, which only those streams can have
    produced (engine side). The engine does not pace its decode on the client's reading (tokens are queued), so the
    streams are kept alive by their length: 20-30 s of decode (minutes under load) against ~2 s for the move."""
    refs = {}
    for p in PROMPTS:
        ids = tiny_ref.tokenizer.encode(p)
        assert len(ids) + LONG_TOKENS <= CONTEXT, (p, len(ids))
        refs[p] = (ids, reference(tiny_ref.model, ids, LONG_TOKENS)[0])
    streams = {p: _Stream(app, refs[p][0], LONG_TOKENS) for p in PROMPTS[:CLIENTS]}
    for s in streams.values():
        s.start()
    try:
        for p, s in streams.items():  # every stream is decoding on P0 before the post
            assert s.first.wait(120) and s.error is None, (p, s.error)
        t_post = time.monotonic()
        r = httpx.post(app + "/admin/v1/placement", headers=AUTH, json={"pool": "cpu", "placement": P1}, timeout=30)
        assert r.status_code == 202, r.text
        pid = r.json()["placementId"]
        assert r.json() == {"pool": "cpu", "placementId": pid} and pid.startswith("p-")
        seen = {}

        def applied():
            v = seen["view"] = get_experts(app)
            return len(v["replicas"]) == REPLICAS and all(x["placementId"] == pid for x in v["replicas"])

        assert wait_for(applied, 120, 0.2), get_experts(app)
        t_done = time.monotonic()
        open_at_done = [p for p, s in streams.items() if not s.done.is_set()]
        # each replica's first report of pid counted its tokens after its swap (placement_board.BoardReporter.tick)
        routed_at_done = {x["replica"]: routed_tokens(x) for x in seen["view"]["replicas"]}
    finally:
        for s in streams.values():
            s.join(300)
    assert all(not s.is_alive() for s in streams.values())
    assert not [s.error for s in streams.values() if s.error], {p: s.error for p, s in streams.items()}
    view = get_experts(app)
    assert view["placementId"] == pid and view["placement"]["layers"] == P1["layers"]
    assert all(x["error"] is None for x in view["replicas"])
    # posting the same placement again: same id, nothing changes
    again = httpx.post(app + "/admin/v1/placement", headers=AUTH, json={"pool": "cpu", "placement": P1}, timeout=30)
    assert again.status_code == 202 and again.json()["placementId"] == pid
    # every request returned exactly the in-process greedy text
    for p, s in streams.items():
        n = s.usage["completion_tokens"]
        assert s.text == text_of(tiny_ref.tokenizer, refs[p][1][:n]), p
        assert s.finish == "stop" or n == LONG_TOKENS, (p, s.finish, n)
    # ... and they were in flight across the whole move: decoding before the post (waited for above), still open
    # when every replica ran the new placement, and decoding on a replica after its swap
    spanning = [p for p, s in streams.items() if s.times[0] < t_post and s.times[-1] > t_done]
    after = {p: sum(t > t_done for t in s.times) for p, s in streams.items()}

    def routed_after_swap():
        return [x["replica"] for x in get_experts(app)["replicas"]
                if routed_tokens(x) > routed_at_done.get(x["replica"], float("inf"))]

    witnessed = wait_for(routed_after_swap, 120, 0.5)
    durations = {p: round(s.times[-1] - s.times[0], 1) for p, s in streams.items()}
    print(f"\nadmin move: POST -> {REPLICAS} replicas on the new placement in {t_done - t_post:.2f} s; "
          f"{len(streams)} streams of {LONG_TOKENS} tokens ({sorted(durations.values())} s), {len(spanning)} open "
          f"across the whole move ({after} chunks after it), tokens routed after the swap on "
          f"{routed_after_swap()}; all equal to the in-process greedy text")
    assert spanning and open_at_done, f"every stream ended before the move was applied ({t_done - t_post:.1f} s): " \
                                      f"stream durations {durations} s; raise LONG_TOKENS"
    assert witnessed, f"no tokens routed on any replica after its swap: {routed_at_done} -> {get_experts(app)}"


@pytest.mark.timing_sensitive  # a 3 s shard-load timeout; Ray restarts the board and replicas re-report in 30 s
def test_a_failing_move_is_reported_and_a_board_restart_keeps_the_posted_placement(app, tiny_ref):
    import ray
    from moe_runtime.placement_board import BOARD_NAMESPACE, board_name

    running = get_experts(app)["placementId"]
    assert running.startswith("p-")  # the previous test's move
    # shard-1 asks for a resource no node has: its new actor never starts; the load times out (3 s here)
    bad = {**P1, "shards": [P1["shards"][0], {**P1["shards"][1], "rayResources": {"no-such-accelerator": 1}}]}
    r = httpx.post(app + "/admin/v1/placement", headers=AUTH, json={"pool": "cpu", "placement": bad}, timeout=30)
    assert r.status_code == 202
    bad_id = r.json()["placementId"]

    def failing():
        v = get_experts(app)
        return v["placementId"] == bad_id and len(v["replicas"]) == REPLICAS and all(
            x["placementId"] == running and "did not load within 3 s" in (x["error"] or "") for x in v["replicas"])

    assert wait_for(failing, 120, 0.5), get_experts(app)
    ids = tiny_ref.tokenizer.encode(PROMPTS[0])  # still serving, on the old placement
    body = complete(app, ids, 8)
    assert body["choices"][0]["text"] == text_of(tiny_ref.tokenizer, reference(tiny_ref.model, ids,
                                                                               body["usage"]["completion_tokens"])[0])
    board = ray.get_actor(board_name(APP), namespace=BOARD_NAMESPACE)
    first = ray.get(board.started.remote())
    ray.kill(board, no_restart=False)  # Ray restarts it empty; replicas re-report, the ingress restores its post

    def restarted():
        try:
            return ray.get(board.started.remote(), timeout=5) != first
        except Exception:  # noqa: BLE001 (restarting)
            return False

    t_kill = time.monotonic()
    assert wait_for(restarted, 120, 0.5)
    assert wait_for(failing, 120, 0.5), get_experts(app)
    print(f"\nboard restart: killed -> posted placement restored and {REPLICAS} replicas reporting in "
          f"{time.monotonic() - t_kill:.2f} s")
    # posting the placement the replicas run clears their errors; nothing moves
    r = httpx.post(app + "/admin/v1/placement", headers=AUTH, json={"pool": "cpu", "placement": P1}, timeout=30)
    assert r.json()["placementId"] == running

    def recovered():
        v = get_experts(app)
        return v["placementId"] == running and len(v["replicas"]) == REPLICAS and all(
            x["placementId"] == running and x["error"] is None for x in v["replicas"])

    assert wait_for(recovered, 120, 0.5), get_experts(app)


def test_admin_auth_and_bad_bodies(app):
    url = app + "/admin/v1/placement"
    good = {"pool": "cpu", "placement": P1}
    for headers in ({}, {"Authorization": "Bearer nope"}):
        r = httpx.post(url, headers=headers, json=good, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token"
        assert httpx.get(app + "/admin/v1/experts", headers=headers, timeout=30).status_code == 401
    cases = [
        ({"pool": "gpu", "placement": P1}, 404, "unknown pool 'gpu'"),
        ({"pool": "cpu", "placement": {**P1, "numExperts": 6, "layers": [[[0, 1, 2], [3, 4, 5]]]}}, 400,
         "model has 4 x 8"),
        ({"pool": "cpu", "placement": {**P1, "layers": [[[0, 1, 2], [4, 5, 6, 7]]]}}, 400,
         "places no copy of experts [3]"),
        ({"pool": "cpu", "placement": {**P1, "layers": [[[0, 1, 2, 3]]]}}, 400, "has 1 shards; expected 2"),
        ({"placement": P1}, 400, "'pool' must be"),
    ]
    for body, status, words in cases:
        r = httpx.post(url, headers=AUTH, json=body, timeout=30)
        assert r.status_code == status and words in r.json()["error"]["message"], (body, r.text)
    r = httpx.post(url, headers=AUTH, content=b"[1, 2", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


@pytest.mark.timing_sensitive  # a replica counts only while it reported within LIVE_S (10 s)
def test_ready_replicas_gauge(app):
    def gauge():
        text = httpx.get(app + "/metrics", timeout=60).text
        line = [x for x in text.splitlines() if x.startswith('moe_ready_replicas{model="tiny-moe",pool="cpu"}')]
        return float(line[0].split()[-1]) if line else None

    assert wait_for(lambda: gauge() == REPLICAS, 60, 0.5), gauge()
