"""The OpenAI API of build_http_app around the real tiny engine, driven by the official ``openai`` client."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from runtime_serving.serving_support import EngineGate, mid_generation, own_rss_bytes, wait_for

MODEL = "tiny-moe"
PROMPT = "A mixture of experts model routes every token to a few expert networks chosen by a small router. " * 2


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_only_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_completion_is_greedy_deterministic_and_second_call_hits_the_cache(client, live_server):
    first = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    second = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    assert first.choices[0].text == second.choices[0].text
    assert first.choices[0].finish_reason in ("length", "stop")
    n_prompt = len(live_server.engine.tokenizer.encode(PROMPT, add_special_tokens=True))
    for r in (first, second):
        u = r.usage
        assert u.prompt_tokens == n_prompt
        assert 1 <= u.completion_tokens <= 4
        assert u.total_tokens == u.prompt_tokens + u.completion_tokens
        extra = u.model_extra
        assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == u.prompt_tokens
        assert u.prompt_tokens_details.cached_tokens == extra["prompt_cache_hit_tokens"]
    block = live_server.config.cache.block_tokens
    # the whole prompt's full blocks were stored by the first request and read back by the second
    assert second.usage.prompt_tokens_details.cached_tokens == (n_prompt // block) * block > 0


def test_chat_stream_equals_non_stream_and_reports_usage(client):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.model_extra["prompt_cache_hit_tokens"] > 0  # same prompt as the non-streamed call


def test_completion_stream_and_stop_string(client):
    full = client.completions.create(model=MODEL, prompt="Hello world!", max_tokens=8, temperature=0)
    text = full.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Hello world!", max_tokens=8, temperature=0, stream=True))
    assert streamed == text
    stop = next((text[i:i + 2] for i in range(1, len(text) - 1) if text[i:i + 2].strip()), None)
    if stop is None:
        pytest.skip(f"greedy text {text!r} has no stop candidate")
    cut = client.completions.create(model=MODEL, prompt="Hello world!", max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


# (description, path, raw body or JSON object) -> each must get a 4xx OpenAI error object
MALFORMED = [
    ("not json", "/v1/completions", b"{"),
    ("json array", "/v1/completions", b"[1, 2]"),
    ("json string", "/v1/chat/completions", b'"hello"'),
    ("binary", "/v1/completions", b"\xff\xfe\x00garbage"),
    ("empty body", "/v1/completions", b""),
    ("missing model", "/v1/completions", {"prompt": "hi"}),
    ("missing prompt", "/v1/completions", {"model": MODEL}),
    ("unknown model", "/v1/completions", {"model": "gpt-4", "prompt": "hi"}),
    ("unknown chat model", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    ("negative max_tokens", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": -1}),
    ("zero max_tokens", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 0}),
    ("string max_tokens", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": "many"}),
    ("temperature too high", "/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": 3.5}),
    ("negative temperature", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": -0.1}),
    ("top_p zero", "/v1/completions", {"model": MODEL, "prompt": "hi", "top_p": 0}),
    ("n > 1", "/v1/completions", {"model": MODEL, "prompt": "hi", "n": 3}),
    ("too many stops", "/v1/completions", {"model": MODEL, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}),
    ("empty messages", "/v1/chat/completions", {"model": MODEL, "messages": []}),
    ("bad role", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}),
    ("image part", "/v1/chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]}),
    ("tools", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                      "tools": [{"type": "function", "function": {"name": "f"}}]}),
    ("logprobs", "/v1/completions", {"model": MODEL, "prompt": "hi", "logprobs": 3}),
    ("prompt too long", "/v1/completions", {"model": MODEL, "prompt": "word " * 2000}),
    ("max_tokens past context", "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 100000}),
    ("token id out of vocab", "/v1/completions", {"model": MODEL, "prompt": [10 ** 9]}),
    ("empty prompt", "/v1/completions", {"model": MODEL, "prompt": ""}),
    ("penalty", "/v1/completions", {"model": MODEL, "prompt": "hi", "presence_penalty": 1.0}),
    ("body too large", "/v1/completions", {"model": MODEL, "prompt": "x" * (2 << 20)}),
    ("wrong method", "GET /v1/completions", None),
    ("no such route", "/v1/engines", {"model": MODEL}),
]


def test_malformed_requests_get_openai_errors_and_the_server_keeps_serving(live_server, client):
    assert len(MALFORMED) >= 20
    with httpx.Client(base_url=live_server.base_url, timeout=60) as http:
        for name, path, body in MALFORMED:
            if path.startswith("GET "):
                r = http.get(path[4:])
            else:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                r = http.post(path, content=raw, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:200])
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}, name
            assert err["message"], name
    codes = {}
    with httpx.Client(base_url=live_server.base_url, timeout=60) as http:
        for name, body in (("unknown model", {"model": "gpt-4", "prompt": "hi"}),
                           ("n > 1", {"model": MODEL, "prompt": "hi", "n": 3}),
                           ("too large", {"model": MODEL, "prompt": "x" * (2 << 20)}),
                           ("bad value", {"model": MODEL, "prompt": "hi", "temperature": 9})):
            codes[name] = http.post("/v1/completions", json=body).status_code
    assert codes == {"unknown model": 404, "n > 1": 422, "too large": 413, "bad value": 400}
    assert client.completions.create(model=MODEL, prompt="still there?", max_tokens=2).usage.completion_tokens >= 1


# The disconnect tests hold the engine at a decode step while the request is mid-generation (EngineGate), so the
# client always leaves before the sequence could finish, however fast or slow this machine is; the step goes on
# only once the server has marked the sequence cancelled. Greedy, so no sampled end-of-sequence token ends it early.
def _cancel_marked(engine) -> bool:
    return any(s.cancelled for s in engine._running)


@pytest.mark.timing_sensitive
def test_client_disconnect_cancels_the_sequence(live_server):
    engine = live_server.engine
    before = engine.stats().requests["cancelled"]
    with EngineGate(engine, "_decode", when=mid_generation) as gate:
        gate.hold()
        with httpx.Client(base_url=live_server.base_url, timeout=60) as http:
            body = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": 400, "temperature": 0, "stream": True}
            with http.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))
                assert gate.held.wait(60), "the request never reached a decode step"
            # leaving the block closes the connection mid-stream
        assert wait_for(lambda: _cancel_marked(engine), 30), "the server did not cancel the stream"
    assert wait_for(lambda: engine.stats().requests["cancelled"] > before, 30), "sequence was not cancelled"
    assert wait_for(lambda: engine.stats().running == 0, 30)


@pytest.mark.timing_sensitive
def test_non_streaming_client_disconnect_cancels_too(live_server):
    engine = live_server.engine
    before = engine.stats().requests["cancelled"]
    body = json.dumps({"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": 480, "temperature": 0})
    url = urlsplit(live_server.base_url)
    with EngineGate(engine, "_decode", when=mid_generation) as gate:
        gate.hold()
        with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
            sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            assert gate.held.wait(60), "the request never reached a decode step"
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):   # mid-generation: no response yet
                sock.recv(1)
        # the client gives up and closes the connection
        assert wait_for(lambda: _cancel_marked(engine), 30), "the server did not cancel the request"
    assert wait_for(lambda: engine.stats().requests["cancelled"] > before, 30), "sequence was not cancelled"


async def _burst(base_url: str, n: int, arrived=None, then=None) -> list[httpx.Response]:
    """``n`` requests at once; with ``arrived``, ``then()`` is called once ``arrived()`` is true."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http:
        body = {"model": MODEL, "prompt": "One, two, three, four, five.", "max_tokens": 2}
        sent = asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(n)))
        if arrived is not None:
            deadline = time.monotonic() + 120
            while not arrived() and not sent.done():
                assert time.monotonic() < deadline, "the burst did not reach the engine in 120 s"
                await asyncio.sleep(0.01)
            then()
        return await sent


@pytest.mark.timing_sensitive
def test_ten_times_the_queue_gets_429_with_retry_after_and_memory_stays_bounded(live_server, client):
    n = 10 * live_server.config.max_queue
    engine = live_server.engine
    rss = [own_rss_bytes()]
    statuses: list[int] = []

    def settled(rejected_before: int) -> bool:   # every request of the burst is in the engine or refused
        st = engine.stats()
        return st.requests["rejected"] - rejected_before + st.queue_depth + st.running >= n

    for _ in range(2):
        # the engine is held at its first prefill until the whole burst has arrived: "ten times the queue at
        # once" is then what the engine sees, not a race between the arrivals and 2-token requests finishing
        with EngineGate(engine, "_prefill") as gate:
            gate.hold()
            rejected = engine.stats().requests["rejected"]
            responses = asyncio.run(_burst(live_server.base_url, n, lambda: settled(rejected), gate.release))
        rss.append(own_rss_bytes())
        statuses += [r.status_code for r in responses]
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["code"] == "queue_full"
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(429) >= n  # at least half of all requests are refused at once...
    assert statuses.count(200) >= live_server.config.max_queue + live_server.config.max_batch_size  # ...not all
    growth = rss[-1] - rss[1]  # after the first burst warmed everything up
    assert growth < 64 << 20, f"RSS grew {growth / 2**20:.1f} MiB over another burst: {rss}"
    assert client.completions.create(model=MODEL, prompt="after the storm", max_tokens=2).choices
    assert live_server.engine.stats().queue_depth == 0
