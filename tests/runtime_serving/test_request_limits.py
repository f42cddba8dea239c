"""Issue 14 item 3: no request makes the server buffer without bound or hog its event loop.

- a body without Content-Length (chunked) is read only up to the limit, then answered 413;
- a prompt that cannot fit the context is refused before it is tokenized, and tokenization (and the chat
  template) runs off the event loop;
- the detokenizer decodes each token's window, not the whole output again: O(n) ids decoded for n tokens.
Call counts and thread identities, not times: these hold on any machine."""
from __future__ import annotations

import asyncio
import json
import random

import pytest

from moe_runtime import openai_api as oa
from moe_runtime.server import TextCodec, _Detokenizer, build_http_app

MODEL = "tiny-moe"


async def _asgi_post(app, path: str, chunks, pulled: list[int]) -> tuple[int, dict]:
    """POST ``chunks`` (an iterator of bytes) to ``app`` as a body without Content-Length, the way a chunked
    request reaches an ASGI app; ``pulled`` gets the size of every chunk the app asked for."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    it = iter(chunks)

    async def receive():
        chunk = next(it, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": True}

    out: dict = {"status": None, "body": b""}

    async def send(msg):
        if msg["type"] == "http.response.start":
            out["status"] = msg["status"]
        elif msg["type"] == "http.response.body":
            out["body"] += msg.get("body", b"")

    await app(scope, receive, send)
    return out["status"], json.loads(out["body"] or b"null")


class _View:
    """The live engine with a spying tokenizer in front (build_http_app reads ``engine.tokenizer``)."""

    def __init__(self, engine, tokenizer):
        self._engine, self.tokenizer = engine, tokenizer

    def __getattr__(self, name):
        return getattr(self._engine, name)


class SpyTokenizer:
    """Counts encode calls and records whether each ran on a thread with a running event loop."""

    def __init__(self, inner):
        self.inner, self.encoded, self.on_loop = inner, [], []

    def encode(self, text, add_special_tokens=False):
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        self.encoded.append(len(text))
        return self.inner.encode(text, add_special_tokens=add_special_tokens)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture()
def spied(live_server):
    spy = SpyTokenizer(live_server.engine.tokenizer)
    return build_http_app(_View(live_server.engine, spy), manage_engine=False), spy


def test_a_chunked_body_is_read_only_up_to_the_limit(spied):
    app, _ = spied
    chunk = b" " * (64 << 10)
    pulled: list[int] = []
    endless = (chunk for _ in range(1024))  # 64 MiB, never sent whole
    status, body = asyncio.run(_asgi_post(app, "/v1/completions", endless, pulled))
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert sum(pulled) <= oa.MAX_BODY_BYTES + len(chunk)


def test_a_chunked_body_under_the_limit_is_served(spied):
    app, _ = spied
    raw = json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 1}).encode()
    status, body = asyncio.run(_asgi_post(app, "/v1/completions", [raw[:7], raw[7:]], []))
    assert status == 200 and body["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(spied, route):
    app, spy = spied
    text = "expert " * 140_000  # ~1 MiB of text, far beyond a 512-token context
    body = {"model": MODEL, "prompt": text} if "chat" not in route else \
        {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    status, out = asyncio.run(_asgi_post(app, route, [json.dumps(body).encode()], []))
    assert status == 400 and out["error"]["code"] == "context_length_exceeded"
    assert spy.encoded == []


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_prompts_are_tokenized_off_the_event_loop(spied, route):
    app, spy = spied
    body = {"model": MODEL, "prompt": "Hello there", "max_tokens": 1} if "chat" not in route else \
        {"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 1}
    status, _ = asyncio.run(_asgi_post(app, route, [json.dumps(body).encode()], []))
    assert status == 200
    assert spy.on_loop == [False]


class CountingByteTokenizer:
    """One token per UTF-8 byte; counts the ids it is asked to decode."""

    def __init__(self):
        self.decoded = 0

    def encode(self, text, add_special_tokens=False):
        return list(text.encode())

    def decode(self, ids, skip_special_tokens=True):
        self.decoded += len(ids)
        return bytes(ids).decode(errors="replace")


def _stream(detok: _Detokenizer, ids: list[int]) -> str:
    out = []
    for t in ids:
        out.append(detok.push(t))
        if detok.stopped:
            return "".join(out)
    return "".join(out) + detok.flush()


def test_detokenizing_n_tokens_decodes_o_n_ids():
    tok = CountingByteTokenizer()
    text = "Mixture of experts — Mischung der Experten, 専門家の混合. " * 60
    ids = tok.encode(text)
    assert len(ids) > 3000
    assert _stream(_Detokenizer(TextCodec(tok), ["never-there"]), ids) == text
    assert tok.decoded <= 16 * len(ids), f"{tok.decoded} ids decoded for {len(ids)} tokens"


@pytest.mark.parametrize("seed", range(20))
def test_incremental_text_equals_decoding_the_whole_output(seed):
    rng = random.Random(seed)
    alphabet = "ab \n€é専ST"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
    ids = list(text.encode())
    if rng.random() < 0.3:  # cut off mid-character: the replacement character rides on the flush
        ids = ids[:-1]
    stop = rng.choice([None, "ST", "\n\n", "€é"])
    full = bytes(ids).decode(errors="replace")
    want = full if stop is None or stop not in full else full[:full.index(stop)]
    got = _stream(_Detokenizer(TextCodec(CountingByteTokenizer()), [stop] if stop else None), ids)
    assert got == want, (text, stop)
