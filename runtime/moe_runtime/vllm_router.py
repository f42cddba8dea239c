"""One OpenAI endpoint at ``/`` for an ``engine: vllm`` MoEDeployment of two or more pools (issue 12).

A CPU-only Ray Serve ingress in front of the per-pool Ray Serve LLM apps (render/serve.py ``vllm_apps``). Per
request it picks a pool (``pool_choice.decide``: the cheapest pool with headroom, ``routing.rank``) and calls that
pool's LLM server deployment (``LLMServer:<id>`` / ``DPServer:<id>``) through
``serve.get_deployment_handle(<deployment>, app_name=<pool app>).options(stream=True)``, the way Ray Serve LLM's
own ``OpenAiIngress._get_response`` does: ``chat`` / ``completions`` with (request, raw request info), an async
stream whose first item is the whole response (non-streaming), an ``ErrorResponse``, or a list of
``data: {...}\\n\\n`` chunks (streaming). Within a pool, Serve's request router of that deployment (rendered as
Ray Serve LLM's PrefixCacheAffinityRouter) picks the replica.

Fall over: a pool that answers back-pressure (Serve's ``BackPressureError`` at ``max_queued_requests``, or an
``ErrorResponse`` 429/503) is skipped for the next; all full -> 429 with Retry-After. Every pool at zero running
replicas (read from ``serve.status()`` every ``status_period_s``) -> the request waits in a bounded queue
(``pool_choice.WakeQueue``), exported as ``moe_router_waiting_requests{model, pool=""}`` on ``/metrics``, and
gets 503 with Retry-After past the deadline.

Imports neither torch nor vllm at module import: the request types of Ray Serve LLM (which are vLLM's) are
imported when the deployment starts; where they are absent (tests, with fake LLM servers) the body is passed
as the plain JSON dict. No ``from __future__ import annotations``: FastAPI must see ``Request`` as a class.
"""
import asyncio
import json
import logging
import math
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from ray import serve
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .pool_choice import Pool, WaitingFull, WakeQueue, WakeTimeout, decide, estimate_tokens
from .routing import Weights

log = logging.getLogger(__name__)
app = FastAPI()
BACKPRESSURE_CODES = {429, 503}
STATUS_WAIT_S = 5.0  # the longest a request waits for a serve.status() read


class _BadRequest(Exception):
    """The body does not validate as Ray Serve LLM's request type (HTTP 400)."""


def _error(status: int, message: str, kind: str, retry_after_s: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status, headers=headers)


def _error_of(item: Any) -> tuple[int, str, str] | None:
    """(code, message, type) when ``item`` is Ray Serve LLM's ErrorResponse (duck-typed: no vllm import)."""
    err = item.get("error") if isinstance(item, dict) and isinstance(item.get("error"), dict) else \
        getattr(item, "error", None)
    if err is None or isinstance(item, list):
        return None
    get = err.get if isinstance(err, dict) else (lambda k, d=None: getattr(err, k, d))
    code = get("code")
    return (int(code) if isinstance(code, int) else 500, str(get("message", "")), str(get("type", "error")))


def _sse(item: Any) -> str:
    """One stream item as OpenAI server-sent events (Ray Serve LLM's ``_apply_openai_json_format``)."""
    if isinstance(item, list):
        return "".join(_sse(i) for i in item)
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return f"data: {json.dumps(item)}\n\n"
    if hasattr(item, "model_dump_json"):
        return f"data: {item.model_dump_json()}\n\n"
    raise ValueError(f"unexpected stream item {type(item)}")


def _request_types():
    """Ray Serve LLM's request classes (vLLM's OpenAI protocol models), RawRequestInfo and its chat sanitizer, or
    None where vLLM is not installed (the body then travels as a dict)."""
    try:
        from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest, CompletionRequest
        from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request
        from ray.llm._internal.serve.core.protocol import RawRequestInfo
    except ImportError:
        return None
    return {"chat": ChatCompletionRequest, "completions": CompletionRequest,
            "sanitize": _sanitize_chat_completion_request, "raw": RawRequestInfo}


@serve.deployment(name="MoERouter", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(app)
class VLLMRouter:
    """Args (render/serve.py ``router_app``; docs/contracts.md section 3): ``model_name``; ``pools``:
    ``[{name, app_name, deployment, max_num_seqs, max_queue, dollars_per_work}]``; ``weights``: ``{prompt,
    cached_prompt}`` work units per token; ``wake``: ``{timeout_s, max_waiting}``; ``retry_after_s``;
    ``status_period_s``."""

    def __init__(self, config: dict):
        self.model = str(config["model_name"])
        self.pools = [Pool(**p) for p in config["pools"]]
        w = config.get("weights") or {}
        self.weights = Weights(prompt=float(w.get("prompt", Weights.prompt)),
                               cached_prompt=float(w.get("cached_prompt", Weights.cached_prompt)))
        wake = config.get("wake") or {}
        self.wake = WakeQueue(int(wake.get("max_waiting", 256)), float(wake.get("timeout_s", 300)))
        self.retry_after_s = int(config.get("retry_after_s", 5))
        self.status_period_s = float(config.get("status_period_s", 2.0))
        self.replicas: dict[str, int] = {}
        self.in_flight = {p.name: 0 for p in self.pools}
        self.pending_prefill = {p.name: 0.0 for p in self.pools}   # prompt tokens sent, no first token seen yet
        slo = config.get("slo") or {}
        self.ttft_target_s = float(slo["ttft_s"]) if slo.get("ttft_s") else None
        self.tpot_target_s = float(slo["tpot_s"]) if slo.get("tpot_s") else None
        self._read_at = -1e9
        self._reading: asyncio.Future | None = None   # the serve.status() read in flight (_refresh)
        self.status_wait_s = STATUS_WAIT_S
        self._handles: dict[str, Any] = {}
        self._types = _request_types()

    # --- what the router knows of the pools ------------------------------------------------------------------
    def _read_replicas(self) -> dict[str, int]:
        """Running replicas per pool from Serve's controller (blocking: called in a thread)."""
        apps = serve.status().applications
        out = {}
        for p in self.pools:
            st = apps.get(p.app_name)
            dep = st.deployments.get(p.deployment) if st else None
            states = {str(getattr(k, "value", k)): v for k, v in ((dep.replica_states or {}) if dep else {}).items()}
            out[p.name] = int(states.get("RUNNING", 0))
        return out

    async def _refresh(self, max_age_s: float) -> None:
        """Replica counts at most ``max_age_s`` old. One read at a time: requests that find it stale while a read
        is in flight wait for that read, so many waiting requests cost the controller one call, not one each."""
        if time.monotonic() - self._read_at < max_age_s:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        try:   # a controller that does not answer holds no request longer than this: the last counts stand
            await asyncio.wait_for(asyncio.shield(self._reading), self.status_wait_s)
        except asyncio.TimeoutError:
            log.warning("serve.status() took over %.0f s, keeping the last replica counts", self.status_wait_s)

    async def _read(self) -> None:
        try:
            self.replicas = await asyncio.to_thread(self._read_replicas)
            self._read_at = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - the controller may be busy: keep the last counts
            log.warning("serve.status() failed, keeping the last replica counts: %s", exc)

    async def _any_up(self) -> bool:
        await self._refresh(self.wake.poll_s)
        return any(n > 0 for n in self.replicas.values())

    def _handle(self, pool: Pool):
        h = self._handles.get(pool.name)
        if h is None:
            h = self._handles[pool.name] = serve.get_deployment_handle(pool.deployment, app_name=pool.app_name)\
                .options(stream=True)
        return h

    # --- OpenAI API ------------------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0,
                                            "owned_by": "moe-operator"}]}

    @app.get("/metrics")
    async def metrics(self) -> Response:
        model = self.model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        text = ("# HELP moe_router_waiting_requests Requests the router holds because no replica that could take "
                "them is ready.\n# TYPE moe_router_waiting_requests gauge\n"
                f'moe_router_waiting_requests{{model="{model}",pool=""}} {self.wake.waiting}\n')
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._serve("chat", request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve("completions", request)

    async def _serve(self, method: str, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "invalid_request_error")
        if body.get("model") not in (None, self.model):
            return _error(404, f'model "{body.get("model")}" is not served here; /v1/models lists "{self.model}"',
                          "invalid_request_error")
        body["model"] = self.model
        try:
            call = self._request(method, body, request)
        except _BadRequest as exc:
            return _error(400, str(exc), "invalid_request_error")
        await self._refresh(self.status_period_s)
        try:
            if not any(n > 0 for n in self.replicas.values()):
                await self.wake.wait(self._any_up)   # polls every wake.poll_s while held
        except WaitingFull:
            return _error(503, "every pool is at zero replicas and the wake queue is full", "service_unavailable",
                          self.retry_after_s)
        except WakeTimeout:
            return _error(503, f"no pool came up within {self.wake.timeout_s:g} s", "service_unavailable",
                          self.retry_after_s)
        prompt, output = estimate_tokens(body)
        decision = decide(self.pools, self.replicas, self.in_flight, prompt_tokens=prompt, output_tokens=output,
                          weights=self.weights, pending_prefill=self.pending_prefill,
                          ttft_target_s=self.ttft_target_s, tpot_target_s=self.tpot_target_s)
        by_name = {p.name: p for p in self.pools}
        for name in decision.pools:
            response = await self._try(by_name[name], method, call, bool(body.get("stream")), prompt)
            if response is not None:
                return response
        return _error(429, "every pool is full", "rate_limit_error", self.retry_after_s)

    def _request(self, method: str, body: dict, request: Request) -> tuple[Any, Any]:
        """(request, raw request info) as Ray Serve LLM's server takes them."""
        if self._types is None:
            return body, None
        try:
            req = self._types[method].model_validate(body)
        except ValueError as exc:  # pydantic's ValidationError: the client's body, a 400 (never a 500)
            raise _BadRequest(str(exc).splitlines()[0][:300]) from None
        if method == "chat":
            req = self._types["sanitize"](req)
        return req, self._types["raw"].from_starlette_request(request)

    async def _try(self, pool: Pool, method: str, call: tuple[Any, Any], stream: bool,
                   prompt_tokens: int = 0) -> Response | None:
        """The pool's answer, or None when it pushed back (the caller falls over to the next pool). Its prompt
        counts as the pool's pending prefill until its first token: a stream's first chunk; for a whole answer,
        which arrives with the last token, the predicted first token (its share of the queue and its own prompt
        at one replica's prefill rate), or the answer if that comes first."""
        from ray.serve.exceptions import BackPressureError

        self.in_flight[pool.name] += 1
        self.pending_prefill[pool.name] += prompt_tokens
        prefilled = False

        def first_token():
            nonlocal prefilled
            if not prefilled:
                prefilled = True
                self.pending_prefill[pool.name] = max(0.0, self.pending_prefill[pool.name] - prompt_tokens)

        released = False

        def release():
            nonlocal released
            first_token()
            if not released:
                released = True
                self.in_flight[pool.name] -= 1

        gen = None
        try:
            gen = getattr(self._handle(pool), method).remote(*call)
            # Serve holds a call to a pool without a running replica for ever (it reached zero after the last
            # status read): bounded by the wake deadline, then the next pool
            if not stream and math.isfinite(pool.prefill_tps) and pool.prefill_tps > 0:
                n = max(1, self.replicas.get(pool.name, 1))
                ahead = (self.pending_prefill[pool.name] - prompt_tokens) / n + prompt_tokens
                asyncio.get_running_loop().call_later(max(0.0, ahead) / pool.prefill_tps, first_token)
            first = await asyncio.wait_for(gen.__anext__(), self.wake.timeout_s)
            first_token()
        except BackPressureError:
            release()
            return None
        except asyncio.TimeoutError:
            release()
            gen.cancel()
            return None
        except BaseException:
            release()
            if gen is not None:
                gen.cancel()
            raise
        err = _error_of(first[0] if isinstance(first, list) and first else first)
        if err is not None:
            release()
            if err[0] in BACKPRESSURE_CODES:
                return None
            return _error(err[0], err[1], err[2])
        if not stream:
            release()
            return JSONResponse(first if isinstance(first, dict) else first.model_dump())

        finished = False

        def close() -> None:   # idempotent: the body's end, or the response's background task if it never ran
            release()
            if not finished:
                gen.cancel()

        async def chunks() -> AsyncIterator[str]:
            nonlocal finished
            try:
                done = False
                for item in (first,):
                    packet = _sse(item)
                    done |= packet.strip().endswith("data: [DONE]")
                    yield packet
                async for item in gen:
                    packet = _sse(item)
                    done |= packet.strip().endswith("data: [DONE]")
                    yield packet
                if not done:
                    yield "data: [DONE]\n\n"
                finished = True
            finally:
                close()

        return StreamingResponse(chunks(), media_type="text/event-stream", background=BackgroundTask(close))


def build_app(args: dict):
    """Serve application builder (``import_path: moe_runtime.vllm_router:build_app``); ``args`` as VLLMRouter."""
    return VLLMRouter.bind(dict(args))
