"""OpenAI wire format: request models, validation into SamplingParams, error bodies, chat template, usage.

Pure (no I/O, no FastAPI): ``server.py`` is the shell that reads bodies and streams responses.
Status codes: 400 invalid value or malformed JSON, 404 unknown model, 413 body too large,
422 a valid OpenAI feature this server does not implement (n>1, logprobs, tools, ...),
429 queue full (with Retry-After), 503 no engine can take the request.
"""
from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moe_runtime.engine.api import SamplingParams, Usage

MAX_BODY_BYTES = 1 << 20  # larger request bodies get 413
MAX_JSON_DEPTH = 32  # arrays/objects nested deeper get 400 (a real request needs 4)
# The only way a lone surrogate (a string UTF-8 cannot encode) gets into a parsed body is a \uD800-\uDFFF escape:
# the raw bytes must be UTF-8, which cannot carry surrogates. Bodies without such an escape skip the string walk.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
MAX_STOP_SEQUENCES = 4

# Used when the tokenizer has no chat template of its own (docs/http-api.md, "Chat template").
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class APIError(Exception):
    """A request the server refuses; becomes ``{"error": {message, type, param, code}}`` with ``status``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Retry-After (whole seconds) when the client should retry; WWW-Authenticate on a 401 (RFC 6750)."""
        out = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.retry_after_s is not None:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return out

    def response(self):
        """The JSON response for this error (status, body, headers)."""
        from fastapi.responses import JSONResponse

        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


async def handle_api_error(_request, exc: APIError):
    """FastAPI exception handler for APIError (the OpenAI routes' and the admin routes')."""
    return exc.response()


def unsupported(param: str, what: str) -> APIError:
    return APIError(422, f"{what} is not supported by this server", param=param, code="unsupported_parameter")


class _Common(BaseModel):
    """Fields shared by completions and chat; unknown OpenAI fields (user, metadata, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is not None:
            if len(stops) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
            if any(not s for s in stops):
                raise ValueError("stop sequences must be non-empty")
        return stops

    def check_supported(self) -> None:
        if self.n != 1:
            raise unsupported("n", "n > 1")
        if self.presence_penalty or self.frequency_penalty:
            raise unsupported(
                "presence_penalty" if self.presence_penalty else "frequency_penalty", "a non-zero penalty"
            )
        if self.logit_bias:
            raise unsupported("logit_bias", "logit_bias")

    def include_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise unsupported("echo", "echo")
        if self.logprobs is not None:
            raise unsupported("logprobs", "logprobs")
        if self.best_of not in (None, 1):
            raise unsupported("best_of", "best_of > 1")
        if self.suffix:
            raise unsupported("suffix", "suffix")
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) > 1:
            raise unsupported("prompt", "a batch of several prompts")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text; content parts other than text are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise unsupported("messages", f"content part of type {part.get('type')!r}")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs:
            raise unsupported("logprobs", "logprobs")
        if self.tools:
            raise unsupported("tools", "tool calling")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise unsupported("response_format", f"response_format {self.response_format.get('type')!r}")


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body or raise a 400/413 APIError: not JSON, not an object, nested deeper than
    MAX_JSON_DEPTH, or holding a string that is not valid Unicode (a lone surrogate, anywhere, keys included)."""
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(413, f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES} bytes",
                       code="request_too_large")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    _check_tree(body, strings=_SURROGATE_ESCAPE.search(raw) is not None)
    return body


def _too_deep() -> APIError:
    return APIError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} arrays/objects", code="invalid_json")


def _check_text(s: str, param: str | None) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, f"invalid value for '{param or 'body'}': a string is not valid Unicode (a lone "
                       "surrogate escape such as \\ud800); send UTF-8 text", param=param,
                       code="invalid_value") from None


def _check_tree(body: Any, strings: bool) -> None:
    """Bound the nesting depth (always) and check every key and string (when ``strings``), iteratively."""
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(node, dict):
            items = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        for key, value in items:
            if strings and isinstance(key, str):
                _check_text(key, path or None)
            child = f"{path}.{key}" if path else str(key)
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1, child))
            elif strings and isinstance(value, str):
                _check_text(value, child)


def validate(model_cls: type[_Common], body: dict[str, Any]) -> Any:
    """Validate a decoded body into ``model_cls``; the first problem becomes a 400 naming the parameter."""
    try:
        req = model_cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise APIError(400, f"invalid value for '{param}': {err['msg']}", param=param, code="invalid_value") from None
    req.check_supported()
    return req


def check_model(requested: str, served: str) -> None:
    if requested != served:
        raise APIError(404, f"The model '{requested}' does not exist; this server serves '{served}'",
                       param="model", code="model_not_found")


def sampling_params(req: _Common, max_tokens: int, stop_token_ids: list[int]) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                          stop_token_ids=list(stop_token_ids))


def resolve_max_tokens(requested: int | None, prompt_tokens: int, max_context: int, default: int,
                       prompt_param: str = "prompt") -> int:
    """Completion budget in tokens: the request's, else ``default`` clipped to what the context has left."""
    room = max_context - prompt_tokens
    if room < 1:
        raise APIError(400, f"This model's maximum context length is {max_context} tokens; the prompt has "
                       f"{prompt_tokens} tokens, which leaves no room for a completion",
                       param=prompt_param, code="context_length_exceeded")
    if requested is None:
        return max(1, min(default, room))
    if requested > room:
        raise APIError(400, f"This model's maximum context length is {max_context} tokens; you requested "
                       f"{prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} for the "
                       "completion)", param="max_tokens", code="context_length_exceeded")
    return requested


def render_chat(messages: list[ChatMessage], template: str | None, bos: str = "", eos: str = "") -> str:
    """Apply the tokenizer's Jinja chat template (or DEFAULT_CHAT_TEMPLATE) with a generation prompt."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)
    msgs = [{"role": m.role, "content": m.text()} for m in messages]
    try:
        return env.from_string(template or DEFAULT_CHAT_TEMPLATE).render(
            messages=msgs, add_generation_prompt=True, bos_token=bos, eos_token=eos)
    except TemplateError as exc:  # the template refuses these messages (raise_exception: roles must alternate, ...)
        raise APIError(400, f"the model's chat template refuses these messages: {exc}", param="messages",
                       code="invalid_value") from None


def usage_json(u: Usage) -> dict[str, Any]:
    """OpenAI usage plus DeepSeek's cache fields (hit + miss = prompt tokens)."""
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.prompt_cache_hit_tokens},
        "prompt_cache_hit_tokens": u.prompt_cache_hit_tokens,
        "prompt_cache_miss_tokens": u.prompt_cache_miss_tokens,
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def completion_json(rid: str, model: str, text: str, finish: str | None, usage: Usage | None) -> dict[str, Any]:
    out = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage_json(usage)
    return out


def chat_json(rid: str, model: str, text: str, finish: str | None, usage: Usage | None) -> dict[str, Any]:
    out = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                        "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage_json(usage)
    return out


def completion_chunk(rid: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}


def chat_chunk(rid: str, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def usage_chunk(rid: str, model: str, obj: str, usage: Usage) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage_json(usage)}


def openai_finish_reason(reason: str | None) -> str | None:
    """Engine reasons -> OpenAI's: stop and length pass through; cancelled/error are reported as stop."""
    return reason if reason in ("stop", "length") else ("stop" if reason else None)
