"""Issue 14 item 1: an error belongs to the sequence that caused it. A request that breaks sampling, a prefill that
fails (a bad cache block, one long prompt's OOM) or a decode forward that fails because of one sequence finishes
that sequence with ``finish_reason="error"``; every other sequence of the batch completes with the tokens it
produces alone. Sampling is numerically safe: a tiny temperature is greedy."""
from __future__ import annotations

import asyncio

import pytest
import torch

from runtime_core.rc_helpers import greedy, settled_stats
from moe_runtime.engine import SamplingParams
from moe_runtime.engine import core as core_mod
from moe_runtime.engine.core import TorchEngine
from moe_runtime.engine.sampling import make_generator, sample

PROMPT = "Expert parallel serving keeps every expert busy while the router picks two of eight per token. "
VICTIM = "Hello world! How are you today?"


@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 1e-12, 5e-324])
@pytest.mark.parametrize("scale", [1.0, 1e4, 1e37])
def test_tiny_temperature_samples_the_argmax(temperature, scale):
    logits = torch.randn(768, generator=torch.Generator().manual_seed(7)) * scale
    params = SamplingParams(temperature=temperature, top_p=0.9, seed=3)
    assert sample(logits, params, make_generator(params)) == int(logits.argmax())


def test_huge_logits_at_a_normal_temperature_stay_finite():
    logits = torch.zeros(16)
    logits[5] = 3e38  # float32 overflows when divided by 0.5 without care
    params = SamplingParams(temperature=0.5, seed=1)
    assert sample(logits, params, make_generator(params)) == 5


def _engine(tiny, **kw):
    kw.setdefault("max_batch_size", 4)
    return TorchEngine(tiny, model_name="tiny-moe", max_queue=4, **kw)


async def _drain(stream):
    toks, last = [], None
    async for ev in stream:
        if ev.token_id is not None:
            toks.append(ev.token_id)
        last = ev
    return toks, last


def _victim_beside(tiny, bad_params, n=10, patch=None, monkeypatch=None):
    """A greedy victim and a request with ``bad_params``, both queued before the engine starts so that they are
    admitted, prefilled and decoded together; (victim result, bad result, the victim's tokens alone, stats)."""
    victim = tiny.tokenizer.encode(VICTIM)
    bad = tiny.tokenizer.encode(PROMPT)
    alone, _ = greedy(tiny.model, victim, n)

    async def main():
        e = _engine(tiny)
        if patch:
            patch(e, bad, monkeypatch)  # monkeypatch: the model is the session's, shared with other tests
        streams = [await e.generate(victim, SamplingParams(max_tokens=n), "victim"),
                   await e.generate(bad, bad_params, "bad")]
        await e.start()
        r = await asyncio.gather(*map(_drain, streams))
        stats = await settled_stats(e)
        await e.stop()
        return r, stats

    (v, b), stats = asyncio.run(main())
    return v, b, alone, stats


def test_tiny_temperature_request_beside_a_victim_both_complete(tiny):
    (vt, vlast), (bt, blast), alone, _ = _victim_beside(tiny, SamplingParams(max_tokens=10, temperature=1e-40))
    assert vt == alone and vlast.finish_reason == "length"
    assert blast.finish_reason in ("length", "stop") and blast.error is None
    bad_alone, _ = greedy(tiny.model, tiny.tokenizer.encode(PROMPT), 10)
    assert bt == bad_alone[:len(bt)]  # tiny temperature = greedy


def _raising_sampler(monkeypatch, bad_seed):
    real = core_mod.sample

    def sampler(logits, params, gen):
        if params.seed == bad_seed:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real(logits, params, gen)

    monkeypatch.setattr(core_mod, "sample", sampler)


def test_a_sampler_error_fails_only_its_sequence(tiny, monkeypatch):
    _raising_sampler(monkeypatch, bad_seed=666)
    (vt, vlast), (bt, blast), alone, stats = _victim_beside(tiny, SamplingParams(max_tokens=10, seed=666))
    assert vt == alone and vlast.finish_reason == "length"
    assert blast.finish_reason == "error" and "inf, nan" in blast.error
    assert stats.requests["error"] == 1 and stats.requests["ok"] == 1


def test_a_prefill_error_fails_only_its_sequence(tiny, monkeypatch):
    def patch(engine, bad_prompt, monkeypatch):
        real = engine.model.forward

        def forward(tokens, kvs, all_logits=False):  # the bad request's prefill runs out of memory
            if tokens == [bad_prompt]:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real(tokens, kvs, all_logits)
        monkeypatch.setattr(engine.model, "forward", forward)

    (vt, vlast), (bt, blast), alone, stats = _victim_beside(tiny, SamplingParams(max_tokens=10), patch=patch,
                                                            monkeypatch=monkeypatch)
    assert vt == alone and vlast.finish_reason == "length"
    assert bt == [] and blast.finish_reason == "error" and "out of memory" in blast.error
    assert stats.requests["error"] == 1 and stats.running == 0


def test_a_decode_error_caused_by_one_sequence_fails_only_it_and_keeps_the_others_kv_exact(tiny, monkeypatch):
    def patch(engine, bad_prompt, monkeypatch):
        model = engine.model
        real = model.forward

        def forward(tokens, kvs, all_logits=False):
            out = real(tokens, kvs, all_logits)  # the KV of every sequence has been extended by now
            bad = [s for s in engine._running if s.prompt == bad_prompt and len(s.out) >= 3]
            if len(tokens) and any(s.kv in kvs for s in bad):
                raise RuntimeError("illegal memory access in the attention kernel")
            return out
        monkeypatch.setattr(model, "forward", forward)

    (vt, vlast), (bt, blast), alone, stats = _victim_beside(tiny, SamplingParams(max_tokens=10), patch=patch,
                                                            monkeypatch=monkeypatch)
    assert vt == alone and vlast.finish_reason == "length"  # the victim's KV was rolled back, not doubled
    assert len(bt) == 3 and blast.finish_reason == "error" and "illegal memory access" in blast.error
    assert stats.requests == {"ok": 1, "error": 1, "rejected": 0, "cancelled": 0}
