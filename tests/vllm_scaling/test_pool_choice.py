"""The vLLM router's pool choice as pure code (moe_runtime.pool_choice): one routing.Replica per pool, ranked by
routing.rank unchanged; the bounded wake queue while every pool is at zero."""
from __future__ import annotations

import asyncio

import pytest

from moe_runtime.pool_choice import Pool, WaitingFull, WakeQueue, WakeTimeout, decide, estimate_tokens

CHEAP = Pool("ascend", "m-ascend", "LLMServer:m", max_num_seqs=4, max_queue=2, dollars_per_work=1e-6)
DEAR = Pool("h100", "m-h100", "LLMServer:m", max_num_seqs=4, max_queue=2, dollars_per_work=3e-6)
POOLS = [DEAR, CHEAP]


def route(replicas, in_flight):
    return decide(POOLS, replicas, in_flight, prompt_tokens=100, output_tokens=50)


def test_the_cheaper_pool_comes_first_while_it_has_headroom():
    d = route({"ascend": 1, "h100": 1}, {"ascend": 3, "h100": 0})
    assert (d.kind, d.pools) == ("route", ("ascend", "h100"))


def test_slots_and_limit_scale_with_the_pools_running_replicas():
    # 2 replicas x 4 seqs = 8 slots: 7 in flight still has headroom on the cheap pool
    assert route({"ascend": 2, "h100": 1}, {"ascend": 7}).pools[0] == "ascend"
    # 1 replica: 4 slots taken, the dear pool with free slots goes first, the cheap one stays as the fall over
    assert route({"ascend": 1, "h100": 1}, {"ascend": 4}).pools == ("h100", "ascend")


def test_a_pool_at_its_limit_is_left_out_and_all_full_means_429():
    # limit = 1 x (4 + 2) = 6
    assert route({"ascend": 1, "h100": 1}, {"ascend": 6, "h100": 1}).pools == ("h100",)
    assert route({"ascend": 1, "h100": 1}, {"ascend": 6, "h100": 6}).kind == "full"


def test_a_pool_at_zero_is_skipped_and_all_at_zero_means_wait():
    assert route({"ascend": 0, "h100": 1}, {}).pools == ("h100",)
    assert route({"ascend": 0, "h100": 0}, {}).kind == "wait"
    assert route({}, {}).kind == "wait"


def test_token_estimate_reads_chat_and_completion_bodies():
    assert estimate_tokens({"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 7}) == (10, 7)
    assert estimate_tokens({"prompt": "y" * 8}) == (2, 256)


def test_the_wake_queue_returns_when_a_pool_comes_up():
    q = WakeQueue(max_waiting=2, timeout_s=5, poll_s=0.01)
    calls = []

    async def up():
        calls.append(q.waiting)
        return len(calls) >= 3

    asyncio.run(q.wait(up))
    assert calls == [0, 1, 1] and q.waiting == 0          # counted as waiting (the gauge) only while held


def test_the_wake_queue_answers_past_its_deadline_and_never_hangs():
    q = WakeQueue(max_waiting=2, timeout_s=0.1, poll_s=0.02)

    async def never():
        return False

    async def two():
        return await asyncio.gather(q.wait(never), q.wait(never), q.wait(never), return_exceptions=True)

    out = asyncio.run(asyncio.wait_for(two(), 5))
    assert sorted(type(e).__name__ for e in out) == ["WaitingFull", "WakeTimeout", "WakeTimeout"]
    assert q.waiting == 0
    with pytest.raises(WakeTimeout):
        asyncio.run(q.wait(never))
    assert WaitingFull is not WakeTimeout


def test_requests_that_find_the_counts_stale_share_one_status_read():
    """Many requests waiting at zero each find the replica counts stale: they wait for one serve.status() read,
    not one each (the controller serves every tenant)."""
    import asyncio
    import threading
    import time

    from moe_runtime import vllm_router

    cls = vllm_router.VLLMRouter.func_or_class
    router = cls.__new__(cls)
    router.replicas, router._read_at, router._reading, router.status_wait_s = {}, -1e9, None, 5.0
    calls = []

    def read():
        calls.append(threading.get_ident())
        time.sleep(0.2)
        return {"a": 1}

    router._read_replicas = read

    async def go():
        await asyncio.gather(*(router._refresh(0.5) for _ in range(20)))

    asyncio.run(go())
    assert len(calls) == 1 and router.replicas == {"a": 1}


def test_a_controller_that_does_not_answer_holds_no_request_past_the_status_wait():
    import asyncio
    import time

    from moe_runtime import vllm_router

    cls = vllm_router.VLLMRouter.func_or_class
    router = cls.__new__(cls)
    router.replicas, router._read_at, router._reading, router.status_wait_s = {"a": 2}, -1e9, None, 0.2
    router._read_replicas = lambda: time.sleep(2) or {"a": 0}

    async def go():
        t0 = time.monotonic()
        await router._refresh(0.5)
        return time.monotonic() - t0

    assert asyncio.run(go()) < 1.0 and router.replicas == {"a": 2}   # the last counts stand


def test_a_body_ray_serve_llm_refuses_is_a_400_not_a_500():
    import pydantic

    from moe_runtime import vllm_router

    class Chat(pydantic.BaseModel):
        messages: list

    cls = vllm_router.VLLMRouter.func_or_class
    router = cls.__new__(cls)
    router._types = {"chat": Chat, "completions": Chat}
    with pytest.raises(vllm_router._BadRequest):
        router._request("completions", {"messages": 3}, None)


SLOW = Pool("ascend", "m-ascend", "LLMServer:m", max_num_seqs=16, max_queue=8, dollars_per_work=1e-6,
            prefill_tps=4000.0, decode_tps=400.0)
FAST = Pool("h100", "m-h100", "LLMServer:m", max_num_seqs=16, max_queue=8, dollars_per_work=3e-6,
            prefill_tps=12000.0, decode_tps=1200.0)


def test_the_cheap_pool_keeps_the_request_only_while_its_predicted_first_token_meets_the_target():
    """Free slots alone once filled the cheap pool with long prompts (the simulator: 44% SLO). One ascend replica
    with 6000 prompt tokens waiting for a first token and a 3000-token prompt: (6000 + 3000) / the 4000 tokens/s
    its decode batch leaves > 2 s, so the dear pool, idle, goes first; with no target the cheap pool's free slot
    wins, and with nothing queued it meets the target."""
    args = dict(prompt_tokens=3000, output_tokens=100, ttft_target_s=2.0)
    replicas, in_flight = {"ascend": 1, "h100": 1}, {"ascend": 3}
    queued = decide([FAST, SLOW], replicas, in_flight, pending_prefill={"ascend": 6000.0}, **args)
    assert queued.pools == ("h100", "ascend")
    assert decide([FAST, SLOW], replicas, in_flight, pending_prefill={"ascend": 6000.0}, prompt_tokens=3000,
                  output_tokens=100).pools[0] == "ascend"
    assert decide([FAST, SLOW], replicas, in_flight, pending_prefill={}, **args).pools[0] == "ascend"
    # two running replicas share the queue (3000 each ahead of this prompt): the same 6000 meets the target
    assert decide([FAST, SLOW], {"ascend": 2, "h100": 1}, in_flight, pending_prefill={"ascend": 6000.0},
                  **args).pools[0] == "ascend"
    # ... but one prompt is prefilled on one replica: 12000 tokens miss 2 s however many replicas are idle
    big = dict(args, prompt_tokens=12_000)
    assert decide([FAST, SLOW], {"ascend": 8, "h100": 1}, {}, pending_prefill={}, **big).pools[0] == "h100"


def test_the_cheap_pool_keeps_the_request_only_while_its_decode_step_meets_the_tpot_target():
    """A replica's decode step at the pool's mean load (a 16-slot replica at 40 tokens/s: 0.4 s a step when
    full, 0.25 s nearly empty) against a 0.3 s TPOT target: the cheap pool goes first while lightly loaded."""
    slow = Pool("ascend", "m-ascend", "LLMServer:m", max_num_seqs=16, max_queue=8, dollars_per_work=1e-6,
                decode_tps=40.0)
    args = dict(prompt_tokens=10, output_tokens=100, tpot_target_s=0.3)
    assert decide([FAST, slow], {"ascend": 1, "h100": 1}, {"ascend": 1}, **args).pools[0] == "ascend"
    assert decide([FAST, slow], {"ascend": 1, "h100": 1}, {"ascend": 12}, **args).pools[0] == "h100"
    assert decide([FAST, slow], {"ascend": 1, "h100": 1}, {"ascend": 12}, prompt_tokens=10,
                  output_tokens=100).pools[0] == "ascend"


def test_a_busy_pool_prefills_at_the_rate_its_decode_batch_leaves():
    """vLLM carries a 2048-token chunk beside each decode step: on a replica decoding 8 sequences the prefill
    runs at c / (step + c) of its rate, so a queue that meets the target on an idle pool misses it on a busy one."""
    from moe_runtime.pool_choice import CHUNK_TOKENS
    from moe_runtime.routing import decode_step_s

    step = decode_step_s(8, 16, 400.0)
    chunk_s = CHUNK_TOKENS / 4000.0
    rate = 4000.0 * chunk_s / (step + chunk_s)
    pending = rate + 4000.0 - 100.0   # with the prompt, midway between what each rate prefills in 2 s
    assert 2.0 * rate < pending + 100 < 2.0 * 4000.0
    args = dict(prompt_tokens=100, output_tokens=10, ttft_target_s=2.0, pending_prefill={"ascend": pending})
    assert decide([FAST, SLOW], {"ascend": 1, "h100": 1}, {"ascend": 8}, **args).pools[0] == "h100"
    assert decide([FAST, SLOW], {"ascend": 1, "h100": 1}, {"ascend": 0}, **args).pools[0] == "ascend"


def test_the_router_counts_a_prompt_as_pending_until_the_pool_answers():
    """VLLMRouter._try: the prompt is pending prefill on its pool from the call until the first answer (a
    stream's first chunk), and not after a pool pushes back."""
    from moe_runtime import vllm_router

    cls = vllm_router.VLLMRouter.func_or_class
    router = cls.__new__(cls)
    router.in_flight, router.pending_prefill = {"ascend": 0}, {"ascend": 0.0}
    router.wake = WakeQueue(max_waiting=1, timeout_s=5)
    seen = []

    class Gen:
        def __init__(self):
            self.items = [{"choices": [{"text": "a"}]}, {"choices": [{"text": "b"}]}]

        async def __anext__(self):
            seen.append(router.pending_prefill["ascend"])
            await asyncio.sleep(0)
            if not self.items:
                raise StopAsyncIteration
            return self.items.pop(0)

        def __aiter__(self):
            return self

        def cancel(self):
            pass

    class Handle:
        def __init__(self):
            self.completions = self

        def remote(self, *args):
            return Gen()

    router._handle = lambda pool: Handle()

    async def go():
        resp = await router._try(SLOW, "completions", ({}, None), True, prompt_tokens=700)
        after_first = router.pending_prefill["ascend"]
        body = [chunk async for chunk in resp.body_iterator]
        return after_first, body

    after_first, body = asyncio.run(go())
    assert seen[0] == 700.0 and after_first == 0.0 and router.pending_prefill["ascend"] == 0.0
    assert router.in_flight["ascend"] == 0 and body[-1].strip() == "data: [DONE]"


def _bare_router():
    from moe_runtime import vllm_router

    cls = vllm_router.VLLMRouter.func_or_class
    router = cls.__new__(cls)
    router.in_flight, router.pending_prefill, router.replicas = {"ascend": 0}, {"ascend": 0.0}, {"ascend": 1}
    router.wake = WakeQueue(max_waiting=1, timeout_s=5)
    return router


def test_a_whole_answer_stops_counting_as_pending_at_its_predicted_first_token():
    """stream=false (the OpenAI client's default): the answer comes with the last token, so the prompt would count
    as unprefilled for the whole decode; it stops at its predicted first token instead (400 tokens at 4000/s:
    0.1 s), long before a 1 s answer."""
    router = _bare_router()
    seen = []

    class Gen:
        async def __anext__(self):
            await asyncio.sleep(0.05)
            seen.append(router.pending_prefill["ascend"])
            await asyncio.sleep(0.95)
            seen.append(router.pending_prefill["ascend"])
            return {"choices": [{"text": "done"}]}

        def cancel(self):
            pass

    class Handle:
        completions = None

    h = Handle()
    h.completions = type("M", (), {"remote": staticmethod(lambda *a: Gen())})()
    router._handle = lambda pool: h
    resp = asyncio.run(router._try(SLOW, "completions", ({}, None), False, prompt_tokens=400))
    assert resp.status_code == 200 and seen == [400.0, 0.0] and router.pending_prefill["ascend"] == 0.0


def test_a_pool_that_pushes_back_keeps_no_pending_prefill():
    from ray.serve.exceptions import BackPressureError

    router = _bare_router()

    class Gen:
        async def __anext__(self):
            raise BackPressureError(num_queued_requests=1, max_queued_requests=1)

        def cancel(self):
            pass

    h = type("H", (), {})()
    h.completions = type("M", (), {"remote": staticmethod(lambda *a: Gen())})()
    router._handle = lambda pool: h
    assert asyncio.run(router._try(SLOW, "completions", ({}, None), True, prompt_tokens=900)) is None
    assert router.pending_prefill["ascend"] == 0.0 and router.in_flight["ascend"] == 0
