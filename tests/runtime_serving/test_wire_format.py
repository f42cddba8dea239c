"""Pure pieces of the serving layer: request validation, stop strings, chat template, RuntimeConfig, metric merging."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from moe_runtime import openai_api as oa
from moe_runtime.config import RuntimeConfig
from moe_runtime.engine.api import EngineStats, Usage
from moe_runtime.metrics import RuntimeMetrics, merge_stats
from moe_runtime.server import TextCodec, _Detokenizer


class CharTokenizer:
    """One token per character (id = code point): makes detokenizer expectations exact."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def feed(stops, text):
    d = _Detokenizer(TextCodec(CharTokenizer()), stops)
    out = []
    for ch in text:
        out.append(d.push(ord(ch)))
        if d.stopped:
            return "".join(out), True
    return "".join(out) + d.flush(), False


def test_stop_string_cuts_the_text_before_it_even_across_tokens():
    assert feed(["END"], "hello ENDworld") == ("hello ", True)
    assert feed(["\n\n", "xyz"], "ab\ncd\n\nef") == ("ab\ncd", True)
    assert feed(["END"], "hello EN") == ("hello EN", False)  # held back, then flushed at the end


def test_partial_stop_prefix_is_held_back_until_it_is_known():
    d = _Detokenizer(TextCodec(CharTokenizer()), ["STOP"])
    assert [d.push(ord(c)) for c in "aST"] == ["a", "", ""]
    assert d.push(ord("x")) == "STx"  # not a stop after all: released


def test_request_validation_maps_to_openai_statuses():
    ok = oa.validate(oa.CompletionRequest, {"model": "m", "prompt": "hi", "stop": "x", "user": "ignored"})
    assert ok.stop == ["x"]
    cases = [({"model": "m", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
             ({"model": "m", "prompt": "hi", "temperature": 2.5}, 400, "temperature"),
             ({"model": "m"}, 400, "prompt"),
             ({"model": "m", "prompt": "hi", "n": 2}, 422, "n"),
             ({"model": "m", "prompt": "hi", "echo": True}, 422, "echo")]
    for body, status, param in cases:
        with pytest.raises(oa.APIError) as e:
            oa.validate(oa.CompletionRequest, body)
        assert (e.value.status, e.value.param) == (status, param), body
    with pytest.raises(oa.APIError) as e:
        oa.parse_body(b"{nope")
    assert e.value.status == 400 and e.value.body()["error"]["code"] == "invalid_json"
    with pytest.raises(oa.APIError) as e:
        oa.check_model("other", "tiny-moe")
    assert e.value.status == 404


def test_max_tokens_resolution_and_context_errors():
    assert oa.resolve_max_tokens(None, 10, 100, 16) == 16
    assert oa.resolve_max_tokens(None, 95, 100, 16) == 5
    assert oa.resolve_max_tokens(90, 10, 100, 16) == 90
    with pytest.raises(oa.APIError, match="maximum context length is 100"):
        oa.resolve_max_tokens(91, 10, 100, 16)
    with pytest.raises(oa.APIError) as e:
        oa.resolve_max_tokens(None, 100, 100, 16)
    assert e.value.body()["error"]["code"] == "context_length_exceeded"


def test_retry_after_is_whole_seconds_rounded_up():
    assert oa.APIError(429, "full", retry_after_s=0.2).headers() == {"Retry-After": "1"}
    assert oa.APIError(429, "full", retry_after_s=2.5).headers() == {"Retry-After": "3"}
    assert oa.APIError(400, "bad").headers() == {}


def test_chat_template_default_and_custom():
    msgs = [oa.ChatMessage(role="system", content="be brief"),
            oa.ChatMessage(role="user", content=[{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}])]
    assert oa.render_chat(msgs, None) == "<|system|>\nbe brief\n<|user|>\nhi there\n<|assistant|>\n"
    custom = (
        "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    assert oa.render_chat(msgs, custom) == "[system:be brief][user:hi there]>"


def test_usage_carries_openai_and_deepseek_cache_fields():
    u = oa.usage_json(Usage(prompt_tokens=100, completion_tokens=7, prompt_cache_hit_tokens=64,
                            prompt_cache_miss_tokens=36))
    assert u == {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
                 "prompt_tokens_details": {"cached_tokens": 64},
                 "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}


def test_runtime_config_accepts_the_rendered_args_and_rejects_mistakes():
    args = {"model_name": "tiny-moe", "model_source": "builtin://tiny-moe", "device": "cpu",
            "placement": {"numLayers": 4, "numExperts": 4,
                          "shards": [{"name": "shard-0", "device": "cpu", "rayResources": {"CPU": 0.5}},
                                     {"name": "shard-1"}],
                          "layers": [[[0, 1, 3], [2, 3]]]},
            "pools": [{"name": "cpu", "num_replicas": 2, "ray_actor_options": {"resources": {"pool-cpu": 1}}}]}
    cfg = RuntimeConfig.model_validate(args)
    assert cfg.placement.experts_of(3, 1) == [2, 3]
    assert cfg.placement.to_json()["shards"][0]["rayResources"] == {"CPU": 0.5}
    assert RuntimeConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # what app_builder passes on
    assert cfg.for_pool("cpu").metrics_labels == {"pool": "cpu"}
    bad = [{**args, "modle_name": "x"},  # typo: unknown key
           {**args, "device": "tpu"},
           {**args, "pools": [{"name": "a"}, {"name": "a"}]},
           {**args, "placement": {**args["placement"], "layers": [[[0, 1], [1]]]}},  # experts 2, 3 nowhere
           {**args, "placement": {**args["placement"], "layers": [[[0, 1, 2, 3]]]}}]  # 1 list for 2 shards
    for b in bad:
        with pytest.raises(ValidationError):
            RuntimeConfig.model_validate(b)


def test_merge_stats_sums_replicas_and_metrics_render_them():
    a = EngineStats(queue_depth=1, running=2, kv_cache_bytes=10, prefix_cache_bytes={"memory": 5, "disk": 0},
                    tokens={"prompt": 3, "cached_prompt": 1, "generated": 7},
                    requests={"ok": 1, "error": 0, "rejected": 2, "cancelled": 0},
                    expert_tokens=[[1, 2], [3, 4]], capacity_tokens_per_second=10.0)
    b = EngineStats(queue_depth=2, expert_tokens=[[10, 20], [30, 40]], capacity_tokens_per_second=5.0,
                    tokens={"prompt": 1, "cached_prompt": 0, "generated": 1})
    m = merge_stats([a, b])
    assert (m.queue_depth, m.running, m.capacity_tokens_per_second) == (3, 2, 15.0)
    assert m.expert_tokens == [[11, 22], [33, 44]] and m.tokens["generated"] == 8
    metrics = RuntimeMetrics("tiny-moe", {"pool": "ignored", "region": "eu"})
    metrics.update({"gpu": m})
    metrics.count_request("gpu", "rejected")
    text = metrics.render().decode()
    assert 'moe_expert_tokens_total{expert="1",layer="1",model="tiny-moe",pool="gpu",region="eu"} 44.0' in text
    assert 'moe_requests_total{model="tiny-moe",outcome="rejected",pool="gpu",region="eu"} 3.0' in text
    assert 'moe_capacity_tokens_per_second{model="tiny-moe",pool="gpu",region="eu"} 15.0' in text


class ByteTokenizer:
    """One token per UTF-8 byte: a multi-byte character takes several tokens, the first ones undecodable alone."""

    def encode(self, text, add_special_tokens=False):
        return list(text.encode())

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode(errors="replace")


def test_every_token_is_a_chunk_even_while_its_text_is_held_back():
    """A client measures TTFT at the first chunk (vLLM streams one per token): a first token whose text is held back
    (here the first byte of "é") must still be a chunk, or the client's TTFT would include the tokens after it."""
    import asyncio

    from moe_runtime.engine.api import TokenEvent
    from moe_runtime.server import _Handler

    class Engine:
        tokenizer = ByteTokenizer()

    ids = list("éa".encode())                       # 3 tokens: 0xC3 (held), 0xA9 (completes "é"), "a"

    async def stream():
        for k, t in enumerate(ids):
            yield TokenEvent(t, k == len(ids) - 1, "length" if k == len(ids) - 1 else None,
                             Usage(4, len(ids), 0, 4) if k == len(ids) - 1 else None)

    async def collect():
        h = _Handler(Engine(), "cpu", RuntimeMetrics("m"), 16)
        return [x async for x in h.events(stream(), 0.0, 4, None)]

    out = asyncio.run(collect())
    assert [d for d, *_ in out[:3]] == ["", "é", "a"]           # one item per token, the first one empty
    assert all(f is None for _, f, _, _ in out[:3])
    assert out[-1][1] == "length" and out[-1][2].completion_tokens == 3


def test_text_still_held_back_at_the_end_rides_on_the_finish_chunk():
    """No extra chunk after the last token: the flushed tail goes with the finish (a client counting token chunks
    counts the tokens)."""
    import asyncio

    from moe_runtime.engine.api import TokenEvent
    from moe_runtime.server import _Handler

    class Engine:
        tokenizer = ByteTokenizer()

    async def stream():
        yield TokenEvent(ord("a"), False, None)
        yield TokenEvent(0xC3, True, "length", Usage(1, 2, 0, 1))      # ends on half a character

    async def collect():
        return [x async for x in _Handler(Engine(), "cpu", RuntimeMetrics("m"), 16).events(stream(), 0.0, 1, None)]

    out = asyncio.run(collect())
    assert [(d, f) for d, f, _, _ in out] == [("a", None), ("", None), ("\ufffd", "length")]
