"""Issue 14 item 4: a malformed body is the client's mistake (400 with an OpenAI error object), never a 500, and
a 500 never echoes internals. Classes, not single inputs: a string that cannot be encoded as UTF-8 (a lone
surrogate, sent as a JSON escape) anywhere in the body, JSON nested deeper than a bound, and an internal failure
whose text must stay in the server log."""
from __future__ import annotations

import json
import logging

import httpx
import pytest

from moe_runtime import openai_api as oa

MODEL = "tiny-moe"
LONE = "\ud800"  # json.dumps writes it as the escape "\ud800", which json.loads turns back into a lone surrogate
CHAT = [{"role": "user", "content": "hi"}]

SURROGATE_BODIES = [
    ("prompt", "/v1/completions", {"model": MODEL, "prompt": "a" + LONE, "max_tokens": 1}),
    ("prompt list", "/v1/completions", {"model": MODEL, "prompt": [LONE], "max_tokens": 1}),
    ("content", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": LONE + "x"}]}),
    ("content part", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}),
    ("model", "/v1/completions", {"model": MODEL + LONE, "prompt": "hi"}),
    ("model (chat)", "/v1/chat/completions", {"model": LONE, "messages": CHAT}),
    ("stop", "/v1/completions", {"model": MODEL, "prompt": "hi", "stop": ["\udc80"]}),
    ("ignored field", "/v1/completions", {"model": MODEL, "prompt": "hi", "user": LONE}),
    ("nested ignored field", "/v1/chat/completions",
     {"model": MODEL, "messages": CHAT, "metadata": {"a": [{"b": LONE}]}}),
    ("key", "/v1/completions", {"model": MODEL, "prompt": "hi", LONE: 1}),
    ("message name", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x",
                                                                             "name": LONE}]}),
]


def _nested(depth: int) -> bytes:
    return b'{"model": "tiny-moe", "prompt": "hi", "metadata": ' + b"[" * depth + b"]" * depth + b"}"


def _post(http: httpx.Client, path: str, body) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=raw, headers={"content-type": "application/json"})


def _assert_error(r: httpx.Response, status: int, name: str) -> dict:
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], name
    return err


def test_a_string_that_is_not_utf8_anywhere_in_the_body_is_a_400(live_server):
    with httpx.Client(base_url=live_server.base_url, timeout=60) as http:
        for name, path, body in SURROGATE_BODIES:
            err = _assert_error(_post(http, path, body), 400, name)
            assert err["code"] == "invalid_value", name
        # a surrogate pair is one valid character (an emoji), not an error
        ok = _post(http, "/v1/completions", {"model": MODEL, "prompt": "hi \ud83d\ude00", "max_tokens": 1})
        assert ok.status_code == 200, ok.text[:300]


def test_the_error_names_where_the_bad_string_is():
    with pytest.raises(oa.APIError) as e:
        oa.parse_body(json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "ok"},
                                                               {"role": "user", "content": LONE}]}).encode())
    assert e.value.status == 400 and e.value.param == "messages.1.content"


@pytest.mark.parametrize("depth", [100, 5000, 200_000])
def test_json_nested_deeper_than_the_bound_is_a_400(live_server, depth):
    assert oa.MAX_JSON_DEPTH < 100
    with httpx.Client(base_url=live_server.base_url, timeout=60) as http:
        err = _assert_error(_post(http, "/v1/completions", _nested(depth)), 400, f"depth {depth}")
        assert err["code"] == "invalid_json" and str(oa.MAX_JSON_DEPTH) in err["message"]
        ok = _post(http, "/v1/completions", json.loads(_nested(oa.MAX_JSON_DEPTH - 2)) | {"max_tokens": 1})
        assert ok.status_code == 200, ok.text[:300]


SECRET = "/var/lib/moe/secret-path: token=abc123"


def test_an_internal_error_is_a_generic_500_and_the_detail_goes_to_the_log(live_server, monkeypatch, caplog):
    async def broken(*_a, **_kw):
        raise RuntimeError(SECRET)

    monkeypatch.setattr(live_server.engine, "generate", broken)
    with caplog.at_level(logging.ERROR), httpx.Client(base_url=live_server.base_url, timeout=60) as http:
        r = _post(http, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1})
    _assert_error(r, 500, "internal")
    assert "abc123" not in r.text and "RuntimeError" not in r.text and "secret" not in r.text
    assert any(SECRET in (rec.getMessage() + str(rec.exc_info)) for rec in caplog.records)


def test_an_engine_error_is_a_generic_500_for_plain_and_streamed_requests(live_server, monkeypatch, caplog):
    from moe_runtime.engine import core as core_mod

    real = core_mod.sample

    def sampler(logits, params, gen):
        if params.seed == 4242:
            raise RuntimeError(SECRET)
        return real(logits, params, gen)

    monkeypatch.setattr(core_mod, "sample", sampler)
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 0.5, "seed": 4242}
    with caplog.at_level(logging.ERROR), httpx.Client(base_url=live_server.base_url, timeout=60) as http:
        r = _post(http, "/v1/completions", body)
        streamed = _post(http, "/v1/completions", body | {"stream": True})
    err = _assert_error(r, 500, "engine")
    assert err["code"] == "engine_error"
    events = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "engine_error"
    for text in (r.text, streamed.text):
        assert "abc123" not in text and "RuntimeError" not in text
    assert sum(SECRET in (rec.getMessage() + str(rec.exc_info)) for rec in caplog.records) >= 2


def test_a_chat_template_that_refuses_the_messages_is_a_400():
    refusing = "{% if messages[0].role != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}x"
    msgs = [oa.ChatMessage(role="assistant", content="hi")]
    with pytest.raises(oa.APIError) as e:
        oa.render_chat(msgs, refusing)
    assert e.value.status == 400 and e.value.param == "messages"
    assert oa.render_chat([oa.ChatMessage(role="user", content="hi")], refusing) == "x"
