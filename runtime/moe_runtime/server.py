"""The OpenAI-compatible HTTP front: ``build_http_app(engine)`` -> FastAPI app.

The same app runs under plain uvicorn around a local engine and as the Ray Serve ingress around a
``serve_app.RemoteEngine``; both satisfy ``engine.api.AsyncEngine``. Routes: /v1/models, /v1/completions,
/v1/chat/completions (SSE when ``stream``), /health, /metrics, and under Ray Serve the admin API of
``admin_api`` (/admin/v1/..., only with MOE_ADMIN_TOKEN set). A client that goes away cancels its sequence.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from moe_runtime import openai_api as oa
from moe_runtime.engine.api import AsyncEngine, NoReplicaReady, PromptTooLong, QueueFull, TokenEvent, Usage
from moe_runtime.metrics import CONTENT_TYPE, RuntimeMetrics

DISCONNECT_POLL_S = 0.2  # how often a non-streaming request checks that its client is still there
# /metrics waits this long for the placement board's moe_ready_replicas (beside the replicas' snapshots, which wait
# at most serve_app.SNAPSHOT_S); a slower or restarting board leaves the gauge out of that scrape
BOARD_READY_S = 2.0

log = logging.getLogger(__name__)


def server_error(code: str, what: str, detail: str, exc: BaseException | None = None) -> oa.APIError:
    """A 500 whose message is generic: the detail (exception text, engine internals) goes to the log only, under
    an error id that the client's message carries."""
    eid = uuid.uuid4().hex[:12]
    log.error("%s (error id %s): %s", what, eid, detail, exc_info=exc)
    return oa.APIError(500, f"{what}; the server log has the details (error id {eid})", type="server_error",
                       code=code)


def engine_error(rid: str, detail: str) -> oa.APIError:
    return server_error("engine_error", "the engine failed to generate this request", f"request {rid}: {detail}")


class TextCodec:
    """Text <-> token ids over a ``tokenizers.Tokenizer`` (or anything with the same encode/decode)."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.eos_token_id = getattr(tokenizer, "eos_token_id", None)
        self.chat_template = getattr(tokenizer, "chat_template", None)
        self.bos_token = getattr(tokenizer, "bos_token", "") or ""
        self.eos_token = getattr(tokenizer, "eos_token", "") or ""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; completions add the tokenizer's special tokens (e.g. BOS), chat prompts do not
        (their template writes them), as Hugging Face and vLLM do."""
        enc = self.tok.encode(text, add_special_tokens=add_special_tokens)
        return list(getattr(enc, "ids", enc))

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


class _Detokenizer:
    """Turns generated ids into text deltas, holding back partial UTF-8 and anything that may start a stop string.

    Incremental (as vLLM's): each push decodes only the window of ids since the last released text (plus the ids of
    that text, as context for tokenizers whose decoding depends on the previous token), so n tokens cost O(n)
    decoding instead of re-decoding the whole output on every token."""

    def __init__(self, codec: TextCodec, stops: list[str] | None):
        self.codec, self.stops = codec, stops or []
        self.ids: list[int] = []
        self.text = ""  # text of ids[:read]
        self.prefix = 0  # ids[prefix:read] decode to the end of ``text``: the context of the next window
        self.read = 0
        self.sent = 0  # characters of the text already emitted
        self.stopped = False

    def _advance(self, final: bool) -> None:
        """Append the text of ids[read:] once it is whole (not ending in a partial character), or anyway if final."""
        if self.read == len(self.ids):
            return
        before = self.codec.decode(self.ids[self.prefix:self.read])
        window = self.codec.decode(self.ids[self.prefix:])
        if len(window) > len(before) and (final or not window.endswith("\ufffd")):
            self.text += window[len(before):]
            self.prefix, self.read = self.read, len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        self._advance(final=False)
        text = self.text
        for s in self.stops:
            at = text.find(s, max(0, self.sent - len(s) + 1))
            if at >= 0:
                self.stopped = True
                delta, self.sent = text[self.sent:at], at
                return delta
        safe = len(text)
        for s in self.stops:  # hold back a suffix that is a prefix of a stop string
            for k in range(min(len(s) - 1, safe - self.sent), 0, -1):
                if text.endswith(s[:k], 0, safe):
                    safe -= k
                    break
        delta = text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return delta

    def flush(self) -> str:
        if self.stopped:
            return ""
        self._advance(final=True)
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta


async def read_body(request: Request, limit: int = oa.MAX_BODY_BYTES) -> bytes:
    """The request body, or a 413 as soon as it is larger than ``limit``: a declared Content-Length is checked
    before reading, and a body without one (chunked) is read chunk by chunk and never buffered past the limit."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise oa.APIError(413, f"request body is {length} bytes; the limit is {limit} bytes", code="request_too_large")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise oa.APIError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
    return bytes(buf)


# A tokenizer normalizer may shrink text (Unicode composition: up to 3 characters into 1); the pre-check allows for
# more than that so that it never refuses a prompt that fits.
NORMALIZER_SLACK = 4


def max_token_chars(tokenizer: Any) -> int | None:
    """The most characters any one token's text can stand for (its longest vocabulary entry: byte-level and
    metaspace entries are at least as long as the text they cover); None when the tokenizer has no vocabulary."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    try:
        vocab = get_vocab(with_added_tokens=True) if get_vocab else None
    except Exception:  # noqa: BLE001 (no usable vocabulary: no pre-check)
        return None
    longest = max(map(len, vocab), default=0) if vocab else 0
    return longest or None


class _Handler:
    """Request handling shared by the two generation routes."""

    def __init__(self, engine: AsyncEngine, pool: str, metrics: RuntimeMetrics, default_max_tokens: int):
        self.engine, self.pool, self.metrics = engine, pool, metrics
        self.default_max_tokens = default_max_tokens
        self.codec: TextCodec | None = None
        self._token_chars = 0
        if engine.tokenizer is not None:
            self._know(engine.tokenizer)

    def _know(self, tokenizer) -> None:
        self.codec = TextCodec(tokenizer)
        self._token_chars = max_token_chars(tokenizer)

    async def ready(self) -> None:
        """The tokenizer, before a request is read further: an engine that starts without it (a Serve ingress
        whose pools are all at zero) gets it from its first replica, holding the request meanwhile."""
        if self.codec is not None:
            return
        try:
            await self.engine.wait_ready()
        except NoReplicaReady as exc:
            raise oa.APIError(503, str(exc), type="service_unavailable", code="no_replica_ready",
                              retry_after_s=exc.retry_after_s) from None
        if self.codec is None:
            self._know(self.engine.tokenizer)

    def precheck_chars(self, chars: int, param: str) -> None:
        """Refuse, before tokenizing it, a prompt of ``chars`` characters that cannot fit the context whatever its
        tokens: tokenizing a megabyte takes a while, and an answer that is known should not wait for it."""
        if not self._token_chars:
            return
        at_least = chars // (self._token_chars * NORMALIZER_SLACK)
        if at_least >= self.engine.max_context_tokens:
            raise oa.APIError(400, f"This model's maximum context length is {self.engine.max_context_tokens} "
                              f"tokens; the prompt's {chars} characters are at least {at_least} tokens",
                              param=param, code="context_length_exceeded")

    async def start(self, prompt_ids: list[int], params, rid: str):
        """Admit a request to the engine or raise the APIError the client should see."""
        try:
            return await self.engine.generate(prompt_ids, params, rid)
        except QueueFull as exc:
            raise oa.APIError(429, str(exc), type="rate_limit_error", code="queue_full",
                              retry_after_s=exc.retry_after_s) from None
        except NoReplicaReady as exc:
            raise oa.APIError(503, str(exc), type="service_unavailable", code="no_replica_ready",
                              retry_after_s=exc.retry_after_s) from None
        except PromptTooLong as exc:
            raise oa.APIError(400, str(exc), param="prompt", code="context_length_exceeded") from None
        except ValueError as exc:  # the engine's own checks (token ids, sampling values)
            raise oa.APIError(400, str(exc), code="invalid_value") from None

    async def events(self, stream: AsyncIterator[TokenEvent], t0: float, prompt_len: int,
                     stops: list[str] | None) -> AsyncIterator[tuple[str, str | None, Usage | None, str | None]]:
        """(text delta, finish_reason, usage, error) tuples: one per generated token (the delta may be empty) and one
        at the end, which carries any text still held back; closing this generator cancels the sequence."""
        pool = getattr(stream, "pool", self.pool)
        detok = _Detokenizer(self.codec, stops)
        last_t: float | None = None
        usage: Usage | None = None
        try:
            async for ev in stream:
                now = time.perf_counter()
                if ev.usage is not None:
                    usage = ev.usage
                if ev.prefill_s is not None:  # the first event: its prefill began prefill_s before it arrived
                    self.metrics.observe_queue_wait(pool, max(0.0, now - t0 - ev.prefill_s))
                if ev.token_id is not None:
                    if last_t is None:
                        self.metrics.observe_ttft(pool, now - t0)
                    else:
                        self.metrics.observe_tpot(pool, now - last_t)
                    last_t = now
                    delta = detok.push(ev.token_id)
                    if detok.stopped:
                        yield delta, "stop", self._usage(usage, prompt_len, len(detok.ids)), None
                        return
                    # Every generated token is a chunk, its text empty while the detokenizer holds it back
                    # (partial UTF-8, a possible stop string), as vLLM streams: a client's TTFT and TPOT are then
                    # the engine's, not the first printable character's.
                    yield delta, None, None, None
                if ev.finished:
                    tail = detok.flush()       # held-back text rides on the finish chunk, as in vLLM
                    err = (ev.error or "the engine failed") if ev.finish_reason == "error" else None
                    if tail and err is not None:
                        yield tail, None, None, None
                        tail = ""
                    yield tail, oa.openai_finish_reason(ev.finish_reason), \
                        self._usage(usage, prompt_len, len(detok.ids)), err
                    return
            yield detok.flush(), "stop", self._usage(usage, prompt_len, len(detok.ids)), None
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    @staticmethod
    def _usage(u: Usage | None, prompt_len: int, generated: int) -> Usage:
        if u is not None:
            return u
        return Usage(prompt_len, generated, 0, prompt_len)  # stopped early: the engine's count never came


async def _watch_disconnect(request: Request, task: asyncio.Task) -> None:
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not done and await request.is_disconnected():
            task.cancel()
            return


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


class _Routes:
    """The HTTP routes of one engine, one method each: ``build_http_app`` mounts them, and a test can call one alone
    (with a fake engine and a Starlette ``Request``) without building the app."""

    def __init__(self, engine: AsyncEngine, pool: str, metrics: RuntimeMetrics, default_max_tokens: int, admin=None):
        self.engine, self.pool, self.metrics, self.admin = engine, pool, metrics, admin
        self.default_max_tokens = default_max_tokens
        self.handler = _Handler(engine, pool, metrics, default_max_tokens)

    async def health(self):
        return {"status": "ok", "model": self.engine.model_name}

    async def board_ready(self) -> dict[str, int]:
        try:
            return await asyncio.wait_for(self.admin.ready(), BOARD_READY_S)
        except Exception:  # noqa: BLE001 (board slow or unreachable: the gauge is absent rather than wrong)
            return {}

    async def metrics_route(self):
        # the board's count runs beside the replicas' snapshots, so a scrape waits for the slower of the two
        ready = asyncio.ensure_future(self.board_ready()) if self.admin is not None else None
        try:
            by_pool = getattr(self.engine, "stats_by_pool", None)
            self.metrics.update(await by_pool() if by_pool else {self.pool: self.engine.stats()})
            router = getattr(self.engine, "router_figures", None)
            if router is not None:
                self.metrics.update_router(**router())
            if ready is not None:
                self.metrics.update_ready(await ready)
        finally:   # the scraper left (its request cancelled): the board call goes with it
            if ready is not None and not ready.done():
                ready.cancel()
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    def model_card(self) -> dict[str, Any]:
        return {"id": self.engine.model_name, "object": "model", "created": 0, "owned_by": "moe-operator",
                "max_model_len": self.engine.max_context_tokens}

    async def models(self):
        return {"object": "list", "data": [self.model_card()]}

    async def model(self, model_id: str):
        oa.check_model(model_id, self.engine.model_name)
        return self.model_card()

    async def read(self, request: Request, cls):
        req = oa.validate(cls, oa.parse_body(await read_body(request)))
        oa.check_model(req.model, self.engine.model_name)
        return req

    async def completions(self, request: Request):
        t0 = time.perf_counter()
        req: oa.CompletionRequest = await self.read(request, oa.CompletionRequest)
        handler, engine = self.handler, self.engine
        await handler.ready()
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            handler.precheck_chars(len(prompt), "prompt")
            ids = await asyncio.to_thread(handler.codec.encode, prompt, True)  # off the event loop
        else:
            ids = list(prompt)
            vocab = getattr(engine.tokenizer, "get_vocab_size", lambda: None)()
            if vocab is not None and any(not 0 <= t < vocab for t in ids):
                raise oa.APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt",
                                  code="invalid_value")
        if not ids:
            raise oa.APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
        max_tokens = oa.resolve_max_tokens(req.max_tokens, len(ids), engine.max_context_tokens, 16)
        return await self.generate(request, req, ids, max_tokens, t0, chat=False)

    async def chat(self, request: Request):
        t0 = time.perf_counter()
        req: oa.ChatRequest = await self.read(request, oa.ChatRequest)
        handler = self.handler
        await handler.ready()
        handler.precheck_chars(sum(len(m.text()) for m in req.messages), "messages")

        def tokenize() -> list[int]:  # template and tokenizer run off the event loop
            return handler.codec.encode(oa.render_chat(req.messages, handler.codec.chat_template,
                                                       handler.codec.bos_token, handler.codec.eos_token))
        ids = await asyncio.to_thread(tokenize)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_tokens = oa.resolve_max_tokens(requested, len(ids), self.engine.max_context_tokens,
                                           self.default_max_tokens, prompt_param="messages")
        return await self.generate(request, req, ids, max_tokens, t0, chat=True)

    async def generate(self, request: Request, req, ids: list[int], max_tokens: int, t0: float, chat: bool):
        handler = self.handler
        stop_ids = [handler.codec.eos_token_id] if handler.codec.eos_token_id is not None else []
        params = oa.sampling_params(req, max_tokens, stop_ids)
        rid = oa.new_id("chatcmpl" if chat else "cmpl")
        stream = await handler.start(ids, params, rid)
        events = handler.events(stream, t0, len(ids), req.stop)
        if req.stream:
            # the body closes the stream when it ends; the background task when the body never ran (client gone
            # before the first byte): an unclosed stream would hold its replica's load and prefill in the router
            return StreamingResponse(self.sse_body(events, stream, rid, req, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": rid},
                                     background=BackgroundTask(_close, stream))
        task = asyncio.create_task(self.collect(events, stream))
        watcher = asyncio.create_task(_watch_disconnect(request, task))
        try:
            text, finish, usage, err = await task
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            watcher.cancel()
        if err is not None:
            return engine_error(rid, err).response()
        build = oa.chat_json if chat else oa.completion_json
        return JSONResponse(build(rid, self.engine.model_name, text, finish, usage), headers={"X-Request-Id": rid})

    @staticmethod
    async def collect(events, stream) -> tuple[str, str | None, Usage | None, str | None]:
        parts: list[str] = []
        finish = usage = err = None
        try:
            async for delta, fin, u, e in events:
                parts.append(delta)
                finish, usage, err = fin or finish, u or usage, e or err
        finally:
            await events.aclose()
            await _close(stream)  # events' own finally does not run when it never started
        return "".join(parts), finish, usage, err

    async def sse_body(self, events, stream, rid: str, req, chat: bool) -> AsyncIterator[str]:
        model_name = self.engine.model_name
        obj = "chat.completion.chunk" if chat else "text_completion"
        try:
            if chat:
                yield _sse(oa.chat_chunk(rid, model_name, {"role": "assistant", "content": ""}, None))
            async for delta, finish, usage, err in events:
                if err is not None:
                    yield _sse(engine_error(rid, err).body())
                    break
                if chat:
                    yield _sse(oa.chat_chunk(rid, model_name, {"content": delta} if delta or not finish else {},
                                             finish))
                else:
                    yield _sse(oa.completion_chunk(rid, model_name, delta, finish))
                if finish and usage is not None and req.include_usage_in_stream():
                    yield _sse(oa.usage_chunk(rid, model_name, obj, usage))
            yield "data: [DONE]\n\n"
        finally:
            await events.aclose()  # client gone or done: cancels the engine sequence
            await _close(stream)


async def _internal_error(req: Request, exc: Exception):  # e.g. an engine replica died mid-request
    return server_error("internal_error", "internal server error", f"{req.method} {req.url.path}: "
                        f"{type(exc).__name__}: {exc}", exc).response()


async def _not_found(req: Request, _exc):
    return oa.APIError(404, f"no route {req.method} {req.url.path}", code="not_found").response()


async def _bad_method(req: Request, _exc):
    return oa.APIError(405, f"method {req.method} not allowed on {req.url.path}", code="method_not_allowed").response()


def build_http_app(engine: AsyncEngine, *, pool: str = "local", metrics: RuntimeMetrics | None = None,
                   default_max_tokens: int = 256, manage_engine: bool = True, admin=None) -> FastAPI:
    """FastAPI app serving ``engine`` (OpenAI API, /health, /metrics): ``_Routes`` mounted, errors as JSON bodies.

    ``pool`` labels this front's metrics when the engine does not say which pool served a request;
    ``manage_engine`` starts/stops the engine with the app's lifespan; ``admin`` (an ``admin_api.AdminBackend``
    with ``ready()``) adds the admin routes (when MOE_ADMIN_TOKEN is set) and the ``moe_ready_replicas`` gauge.
    """
    metrics = metrics or RuntimeMetrics(engine.model_name, {"pool": pool})
    routes = _Routes(engine, pool, metrics, default_max_tokens, admin)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await engine.stop()

    app = FastAPI(title="moe-runtime OpenAI API", lifespan=lifespan)
    app.state.engine, app.state.metrics = engine, metrics
    app.add_exception_handler(oa.APIError, oa.handle_api_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_exception_handler(404, _not_found)
    app.add_exception_handler(405, _bad_method)
    app.get("/health")(routes.health)
    app.get("/metrics")(routes.metrics_route)
    if admin is not None:
        from moe_runtime.admin_api import mount_admin_routes

        mount_admin_routes(app, admin)
    app.get("/v1/models")(routes.models)
    app.get("/v1/models/{model_id:path}")(routes.model)
    app.post("/v1/completions")(routes.completions)
    app.post("/v1/chat/completions")(routes.chat)
    return app


async def _close(stream) -> None:
    """Close an engine stream (idempotent): cancels its sequence and releases what the router counted for it."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
