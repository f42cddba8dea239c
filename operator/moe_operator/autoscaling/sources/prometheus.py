"""Prometheus source: PromQL over the runtime's contract metrics (docs/contracts.md section 4).

Queries (``{sel}`` = ``namespace="<ns>", model="<served name>"``, values escaped; the operator scopes by the
MoEDeployment's namespace, ``moectl up`` by model only; ``[w]`` = the rate window, default 1m):
  tokens/s by kind   sum by (kind) (rate(moe_tokens_total{sel}[w]))
  by pool and kind   sum by (pool, kind) (rate(moe_tokens_total{sel}[w]))
  requests/s         sum(rate(moe_requests_total{sel}[w]))
  queue depth        sum(moe_queue_depth{sel})
  router waiting     sum(moe_router_waiting_requests{sel})   (added to the queue depth: requests the router holds
                     because no replica that could take them is ready, e.g. a pool or the deployment at zero)
  running            sum(moe_running_sequences{sel})
  TTFT p95 (s)       histogram_quantile(0.95, sum by (le) (rate(moe_ttft_seconds_bucket{sel}[w])))
  TPOT p95 (s)       histogram_quantile(0.95, sum by (le) (rate(moe_tpot_seconds_bucket{sel}[w])))
  queue wait p95 (s) histogram_quantile(0.95, sum by (le) (rate(moe_queue_wait_seconds_bucket{sel}[w])))
  ready replicas     max by (pool) (moe_ready_replicas{sel})   (the runtime's count; max: every ingress exports it)
  freshness          max(timestamp(moe_queue_depth{sel}) or timestamp(moe_router_waiting_requests{sel}))
                     (observed_at = newest sample)
An empty token-rate or queue result means missing metrics (the policy holds); an unreachable server too. Except
when the router reports requests waiting: at zero replicas no engine exports anything, and the waiting requests are
then the whole observation (no tokens served, the queue = the waiting requests), so demand wakes the deployment.
A router that reports none waiting does not stand in for missing engine series: those still hold.
An empty (or NaN) latency result is ``None``, never 0, and leaves the observation complete: a runtime without
moe_queue_wait_seconds (older than it) still scales, its own-prefill part of TTFT estimated (docs/autoscaling.md).
No moe_ready_replicas series (a runtime without it, e.g. Ray Serve LLM): ``ready`` is empty and the caller
uses its own count (the operator: the RayCluster's; ``moectl up``: Serve's).

``engine: vllm`` (Ray Serve LLM) exports vLLM's own engine metrics instead of the contract's (``vllm_queries``):
vLLM names them ``vllm:<name>``; through Ray's metrics agent (``LLMConfig.log_engine_metrics``, on by default)
they are prefixed ``ray_`` and, in recent vLLM, ``:`` becomes ``_``. The selectors match every spelling,
``{__name__=~"(ray_)?vllm[:_]<name>", model_name="<servedModelName>"}`` (Ray Serve LLM sets vLLM's
served_model_name to the LLMConfig's model_id, which the render sets to servedModelName):
  generated tokens/s   sum(rate(<generation_tokens>[w]))
  cached prompt tok/s  sum(rate(<prefix_cache_hits>[w]))           (V1: prefix-cache hits counted in tokens)
  prompt tokens/s      sum(rate(<prompt_tokens>[w])) - cached     (vLLM counts every prompt token)
  requests/s           sum(rate(<request_success>[w]))
  queue depth          sum(<num_requests_waiting>) + sum(moe_router_waiting_requests{scope, model="<served>"})
                       (our router's gauge carries the contract's ``model`` label, not vLLM's ``model_name``)
  running              sum(<num_requests_running>)
  TTFT / TPOT p95      histogram_quantile(0.95, sum by (le) (rate(<time_to_first_token_seconds_bucket>[w]))),
                       TPOT from <time_per_output_token_seconds_bucket> or, in newer vLLM,
                       <inter_token_latency_seconds_bucket>
  queue wait p95       the same over <request_queue_time_seconds_bucket> (arrival until the request is scheduled)
  freshness            max(timestamp(<num_requests_waiting>) or timestamp(moe_router_waiting_requests{...}))
vLLM has no ready-replica gauge: ``ready`` is empty (the operator counts the RayCluster).
"""
from __future__ import annotations

import json
import math
import time
from typing import Callable, Mapping

from ..observation import Observation

KINDS = ("prompt", "cached_prompt", "generated")
#: the router's gauge of requests it holds because no replica that could take them is ready (contracts section 4)
WAITING = "moe_router_waiting_requests"


def promql_string(value: str) -> str:
    """``value`` as a PromQL string literal: PromQL strings take Go's escapes, and JSON's escapes of a quote, a
    backslash and control characters are among them (non-ASCII stays raw: Go has no surrogate-pair escape)."""
    return json.dumps(value, ensure_ascii=False)


def _matchers(labels: Mapping[str, str]) -> str:
    """``name="value",...`` with every value escaped: label values come from the spec, never PromQL."""
    return ", ".join(f"{k}={promql_string(v)}" for k, v in labels.items())


def queries(model: str, window: str = "1m", scope: Mapping[str, str] | None = None) -> dict[str, str]:
    """The PromQL this source runs, by purpose (documented above and in docs/autoscaling.md).

    ``scope``: target labels every series must also carry (the operator passes the MoEDeployment's namespace,
    which Kubernetes service discovery attaches): two namespaces serving the same model name never share demand."""
    sel = "{" + _matchers({**(scope or {}), "model": model}) + "}"
    return {
        "tokens": f"sum by (kind) (rate(moe_tokens_total{sel}[{window}]))",
        "tokens_by_pool": f"sum by (pool, kind) (rate(moe_tokens_total{sel}[{window}]))",
        "requests": f"sum(rate(moe_requests_total{sel}[{window}]))",
        "queue": f"sum(moe_queue_depth{sel})",
        "waiting": f"sum({WAITING}{sel})",
        "running": f"sum(moe_running_sequences{sel})",
        "ttft": f"histogram_quantile(0.95, sum by (le) (rate(moe_ttft_seconds_bucket{sel}[{window}])))",
        "tpot": f"histogram_quantile(0.95, sum by (le) (rate(moe_tpot_seconds_bucket{sel}[{window}])))",
        "queue_wait": f"histogram_quantile(0.95, sum by (le) (rate(moe_queue_wait_seconds_bucket{sel}[{window}])))",
        "ready": f"max by (pool) (moe_ready_replicas{sel})",
        "freshness": f"max(timestamp(moe_queue_depth{sel}) or timestamp({WAITING}{sel}))",
    }


def _vllm(name: str, model: str, scope: Mapping[str, str] | None = None) -> str:
    """Selector of vLLM metric ``name`` (a regex fragment of ours) in any of its spellings, for one served model."""
    return "{" + f'__name__=~"(ray_)?vllm[:_]{name}", ' + _matchers({**(scope or {}), "model_name": model}) + "}"


def vllm_queries(model: str, window: str = "1m", scope: Mapping[str, str] | None = None) -> dict[str, str]:
    """The PromQL for a Ray Serve LLM (vLLM) deployment, by purpose (documented above and in docs/autoscaling.md)."""
    v = lambda name: _vllm(name, model, scope)  # noqa: E731
    router = "{" + _matchers({**(scope or {}), "model": model}) + "}"   # our router's series: the contract's labels
    return {
        "generated": f"sum(rate({v('generation_tokens(_total)?')}[{window}]))",
        "cached": f"sum(rate({v('prefix_cache_hits(_total)?')}[{window}]))",
        "prompt_all": f"sum(rate({v('prompt_tokens(_total)?')}[{window}]))",
        "requests": f"sum(rate({v('request_success(_total)?')}[{window}]))",
        "queue": f"sum({v('num_requests_waiting')})",
        "waiting": f"sum({WAITING}{router})",
        "running": f"sum({v('num_requests_running')})",
        "ttft": f"histogram_quantile(0.95, sum by (le) (rate({v('time_to_first_token_seconds_bucket')}[{window}])))",
        "tpot": "histogram_quantile(0.95, sum by (le) (rate("
                f"{v('(time_per_output_token|inter_token_latency)_seconds_bucket')}[{window}])))",
        "queue_wait": "histogram_quantile(0.95, sum by (le) (rate("
                      f"{v('request_queue_time_seconds_bucket')}[{window}])))",
        "freshness": f"max(timestamp({v('num_requests_waiting')}) or timestamp({WAITING}{router}))",
    }


def _num(v) -> float | None:
    x = float(v)
    return None if math.isnan(x) or math.isinf(x) else x


def _words(exc: Exception) -> str:
    """An error's message when it is ours (boundedhttp's never quote the answer), else only its type: a number
    parse of a hostile answer would quote it (``could not convert string to float: '<body>'``)."""
    from moe_operator.boundedhttp import HttpError

    return str(exc) if isinstance(exc, HttpError) else f"unexpected answer ({type(exc).__name__})"


class _NoSeries(Exception):
    """Prometheus answered but holds no series for the model (the message says which)."""


class _Client:
    """``GET <url>/api/v1/query`` through boundedhttp (a deadline and a body cap per call, TLS verified); only
    the status code of a failed query is reported, never the answer's body (it could be any page the URL names)."""

    def __init__(self, url: str, timeout_s: float, max_bytes: int):
        from moe_operator import boundedhttp

        self.url, self.timeout_s, self.max_bytes = url.rstrip("/"), timeout_s, max_bytes
        self.http = boundedhttp.client(max_connections=2)

    def custom_query(self, query: str) -> list[dict]:
        from moe_operator.boundedhttp import HttpError, request

        a = request(self.http, "GET", f"{self.url}/api/v1/query", params={"query": query},
                    deadline_s=self.timeout_s, max_bytes=self.max_bytes)
        if a.status != 200:
            raise HttpError(f"query answered HTTP {a.status}")
        try:
            doc = a.json()
            result = doc["data"]["result"] if doc.get("status") == "success" else None
        except (ValueError, TypeError, KeyError, AttributeError):
            result = None
        if not isinstance(result, list):
            raise HttpError("the answer is not a Prometheus query result")
        return result


class PrometheusSource:
    """Observation for one model from a Prometheus server (HTTP API ``/api/v1/query``).

    One observation (all its queries) ends within ``timeout_s`` in all, each answer read up to ``max_bytes``."""

    def __init__(self, url: str, model: str, window: str = "1m", clock: Callable[[], float] = time.time,
                 client=None, timeout_s: float = 10.0, engine: str = "torch", max_bytes: int = 4 * 1024 * 1024,
                 scope: Mapping[str, str] | None = None):
        self.url, self.model, self.window, self.clock, self.engine = url, model, window, clock, engine
        self.timeout_s = timeout_s
        self.client = client or _Client(url, timeout_s, max_bytes)
        self.scope = dict(scope or {})
        self.q = (vllm_queries if engine == "vllm" else queries)(model, window, scope)
        self.last_error: str | None = None

    def _scoped(self) -> str:
        """What the missing series must also carry, said where a scrape config without it would leave us holding."""
        if not self.scope:
            return ""
        return (" with target labels " + _matchers(self.scope) + " (the chart's PodMonitor attaches namespace; "
                "a scrape config of your own must too)")

    def _vector(self, key: str) -> list[dict]:
        return self.client.custom_query(query=self.q[key])

    def _scalar(self, key: str) -> float | None:
        res = self._vector(key)
        return _num(res[0]["value"][1]) if res else None

    def observe(self) -> Observation | None:
        """The current observation, or None when Prometheus is unreachable or has no series for the model
        (``last_error`` says which)."""
        from moe_operator.boundedhttp import deadline

        build = self._vllm_observation if self.engine == "vllm" else self._torch_observation
        try:
            with deadline(self.timeout_s):   # every query of this observation together
                obs = build()
        except _NoSeries as exc:
            self.last_error = str(exc)
            return None
        except Exception as exc:  # unreachable or erroring server = missing metrics: the policy holds
            self.last_error = f"prometheus {self.url}: {_words(exc)}"
            return None
        self.last_error = None
        return obs

    def _torch_observation(self) -> Observation:
        """From the runtime's moe_* series (queries())."""
        tokens_res = self._vector("tokens")
        queue, waiting = self._scalar("queue"), self._scalar("waiting")
        if (not tokens_res or queue is None) and not waiting:
            raise _NoSeries(f"no moe_tokens_total/moe_queue_depth series for model {self.model!r}{self._scoped()}")
        # Requests waiting in the router are queued demand; at zero replicas they are all there is (no engine
        # exports tokens or a queue then), so they alone make the observation complete: that wakes a pool from zero.
        queue = (queue or 0.0) + (waiting or 0.0)
        tokens = {k: 0.0 for k in KINDS}
        for r in tokens_res:
            tokens[r["metric"].get("kind", "")] = _num(r["value"][1]) or 0.0
        by_pool: dict[str, dict[str, float]] = {}
        for r in self._vector("tokens_by_pool"):
            by_pool.setdefault(r["metric"].get("pool", ""), {})[r["metric"].get("kind", "")] = (
                _num(r["value"][1]) or 0.0
            )
        ready = {r["metric"].get("pool", ""): int(v) for r in self._vector("ready")
                 if (v := _num(r["value"][1])) is not None}
        fresh = self._scalar("freshness")
        return Observation(
            observed_at=fresh if fresh is not None else self.clock(),
            tokens_per_s={k: tokens.get(k, 0.0) for k in KINDS},
            requests_per_s=self._scalar("requests"), queue_depth=queue, running=self._scalar("running"),
            ttft_p95_s=self._scalar("ttft"), tpot_p95_s=self._scalar("tpot"),
            queue_wait_p95_s=self._scalar("queue_wait"),
            ready={p: n for p, n in ready.items() if p},
            served_by_pool={p: v for p, v in by_pool.items() if p} or None)

    def _vllm_observation(self) -> Observation:
        """From vLLM's own series (vllm_queries()): prompt tokens less the prefix-cache hits are computed ones."""
        generated, queue, waiting = self._scalar("generated"), self._scalar("queue"), self._scalar("waiting")
        if (generated is None or queue is None) and not waiting:
            raise _NoSeries(f"no vLLM generation_tokens/num_requests_waiting series for model_name {self.model!r}"
                            f"{self._scoped()} (Ray Serve LLM exports them with log_engine_metrics)")
        generated, queue = generated or 0.0, (queue or 0.0) + (waiting or 0.0)   # as in _torch_observation
        cached = self._scalar("cached") or 0.0
        prompt = max(0.0, (self._scalar("prompt_all") or 0.0) - cached)
        fresh = self._scalar("freshness")
        return Observation(
            observed_at=fresh if fresh is not None else self.clock(),
            tokens_per_s={"prompt": prompt, "cached_prompt": cached, "generated": generated},
            requests_per_s=self._scalar("requests"), queue_depth=queue, running=self._scalar("running"),
            ttft_p95_s=self._scalar("ttft"), tpot_p95_s=self._scalar("tpot"),
            queue_wait_p95_s=self._scalar("queue_wait"))
