"""A fake Ray Serve LLM pool app for the router test: the part of test_vllm_router_on_serve that is mocked.

vLLM cannot run here, so each pool's ``ray.serve.llm:build_openai_app`` is replaced by ``build_openai_app`` below:
the same builder args (``{"llm_configs": [LLMConfig dict]}``) and the same LLM server deployment name
(``LLMServer:<model id>``), with ``chat`` / ``completions`` methods of Ray Serve LLM's ``LLMServer`` signature
``(request, raw_request_info=None)`` returning an async stream: the whole response for a non-streaming request,
lists of ``data: {...}\\n\\n`` chunks for a streaming one, as ``LLMServer`` does with stream batching. The request
arrives as the plain JSON dict (the router passes Ray Serve LLM's request objects only where vLLM is installed).
Each response names its pool in ``system_fingerprint``. With ``refuse: true`` in the args the pool answers every
request with Ray Serve LLM's ``ErrorResponse`` shape, code 429 (back-pressure).
"""
from __future__ import annotations

import json
import time

from ray import serve


class LLMServer:
    def __init__(self, llm_config: dict, refuse: bool):
        self.model = llm_config["model_loading_config"]["model_id"]
        bundle = llm_config["placement_group_config"]["bundle_per_worker"]
        self.pool = next(k for k in bundle if k.startswith("pool-"))[len("pool-"):]
        self.refuse = refuse

    async def _run(self, kind: str, request: dict):
        if self.refuse:
            yield {"error": {"message": "queue full", "type": "ServiceUnavailable", "code": 429}}
            return
        words = ["hello", "from", self.pool]
        base = {"id": f"{kind}-{self.pool}-{time.monotonic_ns()}", "created": int(time.time()), "model": self.model,
                "system_fingerprint": self.pool}
        if not request.get("stream"):
            if kind == "chat":
                choice = {"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": " ".join(words)}}
                yield {**base, "object": "chat.completion", "choices": [choice],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
            else:
                yield {**base, "object": "text_completion",
                       "choices": [{"index": 0, "text": " ".join(words), "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
            return
        for i, w in enumerate(words):
            last = i == len(words) - 1
            if kind == "chat":
                choice = {"index": 0, "delta": {"content": w + " "}, "finish_reason": "stop" if last else None}
                chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            else:
                chunk = {**base, "object": "text_completion",
                         "choices": [{"index": 0, "text": w + " ", "finish_reason": "stop" if last else None}]}
            yield [f"data: {json.dumps(chunk)}\n\n"]
        yield ["data: [DONE]\n\n"]

    async def chat(self, request, raw_request_info=None):
        async for item in self._run("chat", request):
            yield item

    async def completions(self, request, raw_request_info=None):
        async for item in self._run("completions", request):
            yield item


def build_openai_app(args: dict):
    (cfg,) = args["llm_configs"]
    name = "LLMServer:" + cfg["model_loading_config"]["model_id"].replace("/", "--").replace(".", "_")
    dc = cfg.get("deployment_config") or {}
    return serve.deployment(LLMServer, name=name, num_replicas=int(dc.get("num_replicas", 1)),
                            max_ongoing_requests=int(dc.get("max_ongoing_requests", 16)),
                            ray_actor_options={"num_cpus": 0.05}).bind(cfg, bool(args.get("refuse")))
