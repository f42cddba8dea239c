"""The engine: continuous batching gives the same greedy tokens as running alone, streaming and cancellation,
bounded queue, context limit, seeded sampling, and prefix-cache hits (memory and disk, across a new engine) that
change nothing but the usage counters."""
from __future__ import annotations

import asyncio

import pytest

from runtime_core.rc_helpers import greedy, settled_stats
from moe_runtime.cache import PrefixCache
from moe_runtime.engine import PromptTooLong, QueueFull, SamplingParams
from moe_runtime.engine.core import TorchEngine

PROMPT = ("Context caching stores the keys and values of a prompt prefix so that a repeated prefix is read back "
          "instead of recomputed. ")


def make_engine(tiny, cache=None, **kw):
    kw.setdefault("max_batch_size", 8)
    kw.setdefault("max_queue", 8)
    return TorchEngine(tiny, model_name="tiny-moe", prefix_cache=cache, **kw)


async def collect(engine, prompt, params, rid="r", delay_each=0.0):
    stream = await engine.generate(prompt, params, rid)
    toks, last = [], None
    async for ev in stream:
        if ev.token_id is not None:
            toks.append(ev.token_id)
        last = ev
        if delay_each:
            await asyncio.sleep(delay_each)
    return toks, last


def run(coro):
    return asyncio.run(coro)


def test_request_joining_mid_decode_gives_the_same_greedy_tokens(tiny):
    a_prompt = tiny.tokenizer.encode(PROMPT)
    b_prompt = tiny.tokenizer.encode("Hello world! How are you today?")
    alone_a, _ = greedy(tiny.model, a_prompt, 24)
    alone_b, _ = greedy(tiny.model, b_prompt, 12)

    async def main():
        e = make_engine(tiny)
        await e.start()
        stream = await e.generate(a_prompt, SamplingParams(max_tokens=24), "a")
        got_a, b_task, running_seen = [], None, 0
        async for ev in stream:
            if ev.token_id is not None:
                got_a.append(ev.token_id)
            if len(got_a) == 5 and b_task is None:  # b joins while a is decoding
                b_task = asyncio.create_task(collect(e, b_prompt, SamplingParams(max_tokens=12), "b"))
            if b_task is not None:
                running_seen = max(running_seen, e.stats().running)
        got_b, last_b = await b_task
        await e.stop()
        return got_a, got_b, last_b, running_seen

    got_a, got_b, last_b, running_seen = run(main())
    assert got_a == alone_a and got_b == alone_b
    assert running_seen == 2  # they really were decoded together
    assert last_b.finish_reason == "length" and last_b.usage.completion_tokens == 12


def test_cancel_queue_full_context_limit_and_bad_input(tiny):
    async def main():
        e = make_engine(tiny, max_batch_size=1, max_queue=2, max_context_tokens=64)
        await e.start()
        long = await e.generate([5] * 10, SamplingParams(max_tokens=50), "long")
        agen = long.__aiter__()
        first = await agen.__anext__()
        waiting = [await e.generate([6] * 4, SamplingParams(max_tokens=2), f"w{i}") for i in range(2)]
        with pytest.raises(QueueFull) as qf:
            await e.generate([7] * 4, SamplingParams(max_tokens=2), "over")
        with pytest.raises(PromptTooLong, match="maximum context length is 64"):
            await e.generate([1] * 60, SamplingParams(max_tokens=10), "too-long")
        with pytest.raises(ValueError, match="outside the vocabulary"):
            await e.generate([10**6], SamplingParams(), "bad-token")
        with pytest.raises(ValueError, match="top_p"):
            await e.generate([1], SamplingParams(top_p=0), "bad-top-p")
        await agen.aclose()  # the client goes away: the sequence is cancelled and the batch slot freed
        results = [await collect_stream(w) for w in waiting]
        stats = await settled_stats(e)
        await e.stop()
        return first, qf.value, results, stats

    async def collect_stream(stream):
        return [ev async for ev in stream]

    first, qf, results, stats = run(main())
    assert first.token_id is not None and not first.finished
    assert qf.retry_after_s >= 1.0
    assert all(r[-1].finish_reason == "length" and len(r) == 2 for r in results)
    assert stats.requests["cancelled"] == 1 and stats.requests["rejected"] == 1 and stats.requests["ok"] == 2
    assert stats.running == 0 and stats.queue_depth == 0 and stats.kv_cache_bytes == 0
    assert sum(map(sum, stats.expert_tokens)) > 0


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(tiny):
    prompt = tiny.tokenizer.encode(PROMPT)

    async def main():
        e = make_engine(tiny)
        await e.start()
        p = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234)
        r = await asyncio.gather(collect(e, prompt, p, "s1"), collect(e, prompt, p, "s2"),
                                 collect(e, prompt, SamplingParams(max_tokens=16), "g"))
        await e.stop()
        return [x[0] for x in r]

    s1, s2, g = run(main())
    assert s1 == s2 and s1 != g


def test_stop_token_ends_with_stop(tiny):
    prompt = tiny.tokenizer.encode(PROMPT)
    alone, _ = greedy(tiny.model, prompt, 6)

    async def main():
        e = make_engine(tiny)
        await e.start()
        r = await collect(e, prompt, SamplingParams(max_tokens=20, stop_token_ids=[alone[3]]))
        await e.stop()
        return r

    toks, last = run(main())
    assert toks == alone[:3] and last.finish_reason == "stop" and last.usage.completion_tokens == 4


def _cache(tiny, disk=None, memory=64 * 2**20):
    return PrefixCache(tiny.fingerprint, block_tokens=16, memory_bytes=memory, disk_dir=disk)


def test_prefix_cache_hits_memory_then_disk_after_restart_with_equal_outputs(tiny, tmp_path):
    prompt = tiny.tokenizer.encode(PROMPT * 2)
    follow = prompt + tiny.tokenizer.encode(" And then a new question arrives?")
    ref1, _ = greedy(tiny.model, prompt, 10)
    ref2, _ = greedy(tiny.model, follow, 10)
    disk = tmp_path / "kv"

    async def session(cache):
        e = make_engine(tiny, cache)
        await e.start()
        a = await collect(e, prompt, SamplingParams(max_tokens=10), "a")
        b = await collect(e, follow, SamplingParams(max_tokens=10), "b")
        await e.stop()
        return a, b

    cache1 = _cache(tiny, disk)
    (a1, la1), (b1, lb1) = run(session(cache1))
    assert a1 == ref1 and b1 == ref2
    assert la1.usage.prompt_cache_hit_tokens == 0 and la1.usage.prompt_cache_miss_tokens == len(prompt)
    full_blocks = (len(prompt) - 1) // 16 * 16
    assert lb1.usage.prompt_cache_hit_tokens == full_blocks > 0  # memory-tier hit
    assert lb1.usage.prompt_cache_hit_tokens + lb1.usage.prompt_cache_miss_tokens == len(follow)
    assert cache1.hits["memory"] > 0 and cache1.bytes()["disk"] > 0

    cache2 = _cache(tiny, disk)  # a new engine (a replica restart): empty memory, same directory
    (a2, la2), (b2, lb2) = run(session(cache2))
    assert a2 == ref1 and b2 == ref2
    assert la2.usage.prompt_cache_hit_tokens == full_blocks and cache2.hits["disk"] > 0


def test_corrupt_and_foreign_disk_blocks_are_counted_and_never_served(tiny, tmp_path):
    from moe_runtime.cache.blocks import encode_block
    from moe_runtime.cache.prefix import block_keys

    prompt = tiny.tokenizer.encode(PROMPT * 2)
    ref, _ = greedy(tiny.model, prompt, 8)
    disk = tmp_path / "kv"
    keys = block_keys(tiny.fingerprint, prompt, 16)

    async def once(cache):
        e = make_engine(tiny, cache)
        await e.start()
        r = await collect(e, prompt, SamplingParams(max_tokens=8))
        await e.stop()
        return r

    run(once(_cache(tiny, disk)))
    first = disk / f"{keys[0]}.kvb"
    good = _cache(tiny, disk).disk.get(keys[0])
    assert good is not None and len(list(disk.glob("*.kvb"))) == len(keys)

    data = bytearray(first.read_bytes())
    data[-5] ^= 0xFF  # one flipped payload byte
    first.write_bytes(bytes(data))
    cache = _cache(tiny, disk)
    toks, last = run(once(cache))
    assert toks == ref and last.usage.prompt_cache_hit_tokens == 0  # block 0 unusable -> no prefix served
    assert cache.disk.corrupt == 1 and cache.hits["disk"] == 0

    first.write_bytes(encode_block(good, "another-model-fingerprint", keys[0]))  # a block written by another model
    cache = _cache(tiny, disk)
    toks, last = run(once(cache))
    assert toks == ref and last.usage.prompt_cache_hit_tokens == 0
    assert cache.disk.foreign == 1 and cache.disk.corrupt == 0

    first.write_bytes(b"MOEKVB01")  # truncated
    cache = _cache(tiny, disk)
    assert cache.disk.get(keys[0]) is None and cache.disk.corrupt == 1


def test_the_first_event_says_how_long_ago_the_prefill_began(tiny):
    """The front's queue wait (moe_queue_wait_seconds) is its time to first token less the engine's ``prefill_s``:
    only a sequence's first event carries it (a duration, valid across processes). A request queued behind a full
    batch waits for the batch; one whose first token stops it carries it on its final event."""
    import time

    a_prompt = tiny.tokenizer.encode(PROMPT)
    b_prompt = tiny.tokenizer.encode("Hello world! How are you today?")
    first_of_b, _ = greedy(tiny.model, b_prompt, 1)

    async def timed(stream, t0):
        return [(time.perf_counter() - t0, ev) async for ev in stream]

    async def main():
        e = make_engine(tiny, max_batch_size=1)
        await e.start()
        t0 = time.perf_counter()
        sa = await e.generate(a_prompt, SamplingParams(max_tokens=24), "a")   # admitted first: b waits for it
        sb = await e.generate(b_prompt, SamplingParams(max_tokens=4), "b")
        a, b = await asyncio.gather(timed(sa, t0), timed(sb, t0))
        stopped = [ev async for ev in await e.generate(b_prompt, SamplingParams(max_tokens=4,
                                                                               stop_token_ids=first_of_b), "c")]
        await e.stop()
        return a, b, stopped

    a, b, stopped = run(main())
    for evs in (a, b):
        (t_first, first), rest = evs[0], evs[1:]
        assert first.token_id is not None and first.prefill_s is not None and 0 < first.prefill_s <= t_first
        assert all(ev.prefill_s is None for _, ev in rest)
    wait_a, wait_b = a[0][0] - a[0][1].prefill_s, b[0][0] - b[0][1].prefill_s
    a_done = a[-1][0]
    assert wait_b >= 0.5 * a_done and wait_b > wait_a        # b's prefill began once a had finished
    assert len(stopped) == 1 and stopped[0].finish_reason == "stop" and stopped[0].prefill_s is not None
