"""Runtime metrics of docs/contracts.md section 4 (documented in docs/metrics.md), via prometheus_client.

Counters and gauges come from engine snapshots (``EngineStats``, one per pool, already summed over that pool's
replicas) and are rendered at scrape time; TTFT, TPOT and queue wait (arrival until the request's own prefill
began: its TTFT less the prefill time the engine reports on its first event) are histograms observed by the HTTP
front, which sees the client's view of latency. Every series carries ``model`` and ``pool`` plus the configured
constant labels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from moe_runtime.engine.api import EngineStats

disable_created_metrics()  # *_created series would double the histograms for nothing the autoscaler reads

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
TOKEN_KINDS = ("prompt", "cached_prompt", "generated")
OUTCOMES = ("ok", "error", "rejected", "cancelled")
BAD_BLOCK_REASONS = ("corrupt", "foreign")


def merge_stats(parts: list[EngineStats]) -> EngineStats:
    """Sum replica snapshots of one pool: counters and gauges add (queue depth and capacity are pool totals)."""
    out = EngineStats(prefix_cache_bytes={"memory": 0, "disk": 0}, tokens={k: 0 for k in TOKEN_KINDS},
                      requests={k: 0 for k in OUTCOMES},
                      prefix_cache_disk_bad_blocks={k: 0 for k in BAD_BLOCK_REASONS})
    for s in parts:
        out.queue_depth += s.queue_depth
        out.running += s.running
        out.kv_cache_bytes += s.kv_cache_bytes
        out.capacity_tokens_per_second += s.capacity_tokens_per_second
        out.prefix_cache_disk_write_failures += s.prefix_cache_disk_write_failures
        for d_out, d_in in ((out.prefix_cache_bytes, s.prefix_cache_bytes), (out.tokens, s.tokens),
                            (out.requests, s.requests),
                            (out.prefix_cache_disk_bad_blocks, s.prefix_cache_disk_bad_blocks)):
            for k, v in d_in.items():
                d_out[k] = d_out.get(k, 0) + v
        for li, row in enumerate(s.expert_tokens):
            while len(out.expert_tokens) <= li:
                out.expert_tokens.append([])
            acc = out.expert_tokens[li]
            acc.extend([0] * (len(row) - len(acc)))
            for e, v in enumerate(row):
                acc[e] += v
    return out


@dataclass
class _Front:
    """Requests the front itself finished without an engine event (e.g. Serve back-pressure), by (pool, outcome)."""

    requests: dict[tuple[str, str], int] = field(default_factory=dict)


class RuntimeMetrics:
    """The registry behind one ``/metrics`` endpoint."""

    def __init__(self, model: str, labels: dict[str, str] | None = None):
        extra = {k: v for k, v in (labels or {}).items() if k not in ("model", "pool")}
        self.model = model
        self._extra_names = sorted(extra)
        self._extra_values = [extra[k] for k in self._extra_names]
        self._names = ["model", "pool", *self._extra_names]
        self._stats: dict[str, EngineStats] = {}
        self._ready: dict[str, int] = {}
        self._router: dict[str, Any] | None = None  # the ingress router's state (update_router); None: no router
        self._front = _Front()
        self.registry = CollectorRegistry(auto_describe=True)
        self.ttft = Histogram("moe_ttft_seconds", "Time from request arrival to the first generated token, seconds.",
                              self._names, buckets=TTFT_BUCKETS_S, registry=self.registry)
        self.queue_wait = Histogram("moe_queue_wait_seconds",
                                    "Time from request arrival until its own prefill began, seconds.",
                                    self._names, buckets=TTFT_BUCKETS_S, registry=self.registry)
        self.tpot = Histogram("moe_tpot_seconds", "Time between consecutive output tokens after the first, seconds.",
                              self._names, buckets=TPOT_BUCKETS_S, registry=self.registry)
        self.registry.register(self)  # collect() below renders the engine snapshots
        self.updated_at = 0.0

    def _lv(self, pool: str) -> list[str]:
        return [self.model, pool, *self._extra_values]

    def observe_ttft(self, pool: str, seconds: float) -> None:
        self.ttft.labels(*self._lv(pool)).observe(seconds)

    def observe_queue_wait(self, pool: str, seconds: float) -> None:
        self.queue_wait.labels(*self._lv(pool)).observe(seconds)

    def observe_tpot(self, pool: str, seconds: float) -> None:
        self.tpot.labels(*self._lv(pool)).observe(seconds)

    def count_request(self, pool: str, outcome: str) -> None:
        """A request the front finished on its own (the engine never saw it), e.g. back-pressure -> rejected."""
        key = (pool, outcome)
        self._front.requests[key] = self._front.requests.get(key, 0) + 1

    def update(self, stats_by_pool: dict[str, EngineStats]) -> None:
        self._stats = dict(stats_by_pool)
        self.updated_at = time.time()

    def update_ready(self, ready_by_pool: dict[str, int]) -> None:
        """Replicas per pool that reported to the placement board within 10 s (empty: the gauge is not exported)."""
        self._ready = dict(ready_by_pool)

    def update_router(self, waiting: int, routed: dict[str, int], prefix_blocks: dict[str, int],
                      snapshot_timeouts: dict[str, int] | None = None,
                      collection_seconds: float | None = None) -> None:
        """The ingress router's figures: requests held because no replica is ready (pool "" = any pool), requests
        it sent to each pool, and prompt blocks it found held (hit) or not (miss) on the replica it chose; and of
        the collection behind this very /metrics: replica snapshots each pool left unanswered (its figures are then
        partly stale) and how long the last collection took (None: none finished yet)."""
        self._router = {"waiting": int(waiting), "routed": dict(routed), "blocks": dict(prefix_blocks),
                        "timeouts": dict(snapshot_timeouts or {}), "collection": collection_seconds}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def describe(self):  # the engine families are dynamic; let prometheus_client skip describe-time checks
        return []

    def collect(self):
        names = self._names
        tokens = CounterMetricFamily("moe_tokens_total", "Tokens processed by kind: prompt (computed, i.e. cache "
                                     "misses), cached_prompt (read from the prefix cache), generated.",
                                     labels=[*names, "kind"])
        reqs = CounterMetricFamily("moe_requests_total", "Finished requests by outcome.", labels=[*names, "outcome"])
        queue = GaugeMetricFamily("moe_queue_depth", "Requests waiting to start.", labels=names)
        running = GaugeMetricFamily("moe_running_sequences", "Sequences in the running batch.", labels=names)
        experts = CounterMetricFamily("moe_expert_tokens_total", "Tokens routed to each expert of each MoE layer.",
                                      labels=[*names, "layer", "expert"])
        kv = GaugeMetricFamily("moe_kv_cache_bytes", "KV cache held by running sequences, bytes.", labels=names)
        prefix = GaugeMetricFamily("moe_prefix_cache_bytes", "Prefix cache size by tier, bytes.",
                                   labels=[*names, "tier"])
        disk_fail = CounterMetricFamily("moe_prefix_cache_disk_write_failures",
                                        "Prefix-cache blocks the disk tier failed to write (e.g. ENOSPC); best "
                                        "effort, requests are unaffected.", labels=names)
        bad = CounterMetricFamily("moe_prefix_cache_disk_bad_blocks",
                                  "Disk-tier block files rejected on read and removed, by reason: corrupt (unreadable, "
                                  "truncated, checksum or header invalid) or foreign (another model, runtime version "
                                  "or block shape); each is a cache miss, requests are unaffected.",
                                  labels=[*names, "reason"])
        cap = GaugeMetricFamily("moe_capacity_tokens_per_second",
                                "The replicas' own capacity estimate, generated-token equivalents per second.",
                                labels=names)
        pools = sorted(set(self._stats) | {p for p, _ in self._front.requests})
        for pool in pools:
            lv = self._lv(pool)
            s = self._stats.get(pool, EngineStats())
            for kind in TOKEN_KINDS:
                tokens.add_metric([*lv, kind], float(s.tokens.get(kind, 0)))
            for outcome in OUTCOMES:
                front = self._front.requests.get((pool, outcome), 0)
                reqs.add_metric([*lv, outcome], float(s.requests.get(outcome, 0) + front))
            queue.add_metric(lv, float(s.queue_depth))
            running.add_metric(lv, float(s.running))
            for layer, row in enumerate(s.expert_tokens):
                for expert, v in enumerate(row):
                    experts.add_metric([*lv, str(layer), str(expert)], float(v))
            kv.add_metric(lv, float(s.kv_cache_bytes))
            for tier in ("memory", "disk"):
                prefix.add_metric([*lv, tier], float(s.prefix_cache_bytes.get(tier, 0)))
            disk_fail.add_metric(lv, float(s.prefix_cache_disk_write_failures))
            for reason in BAD_BLOCK_REASONS:
                bad.add_metric([*lv, reason], float(s.prefix_cache_disk_bad_blocks.get(reason, 0)))
            cap.add_metric(lv, float(s.capacity_tokens_per_second))
        families = [tokens, reqs, queue, running, experts, kv, prefix, disk_fail, bad, cap]
        if self._ready:
            ready = GaugeMetricFamily("moe_ready_replicas", "Replicas of the pool that reported to the placement "
                                      "board within the last 10 s.", labels=names)
            for pool, n in sorted(self._ready.items()):
                ready.add_metric(self._lv(pool), float(n))
            families.append(ready)
        if self._router is not None:
            waiting = GaugeMetricFamily("moe_router_waiting_requests", "Requests the router holds because no "
                                        "replica that could take them is ready (pool \"\": any pool, the "
                                        "deployment is at zero): demand the autoscaler wakes the fleet for.",
                                        labels=names)
            waiting.add_metric(self._lv(""), float(self._router["waiting"]))
            routed = CounterMetricFamily("moe_router_requests_total", "Requests the router sent to each pool.",
                                         labels=names)
            for pool, n in sorted(self._router["routed"].items()):
                routed.add_metric(self._lv(pool), float(n))
            blocks = CounterMetricFamily("moe_router_prefix_blocks_total", "Full prompt blocks of routed requests "
                                         "that the chosen replica held (hit) or not (miss), as the router's index "
                                         "knows it.", labels=[*names, "result"])
            for result in ("hit", "miss"):
                blocks.add_metric([*self._lv(""), result], float(self._router["blocks"].get(result, 0)))
            families += [waiting, routed, blocks]
            if self._router["timeouts"]:
                late = CounterMetricFamily("moe_metrics_snapshot_timeouts_total", "Replica snapshots this /metrics "
                                           "asked a pool for and got no answer to in time: the pool's figures "
                                           "are partly stale while it rises.", labels=names)
                for pool, n in sorted(self._router["timeouts"].items()):
                    late.add_metric(self._lv(pool), float(n))
                families.append(late)
            if self._router["collection"] is not None:
                took = GaugeMetricFamily("moe_metrics_collection_seconds", "How long the last collection of the "
                                         "replicas' snapshots behind /metrics took, seconds.", labels=names)
                took.add_metric(self._lv(""), float(self._router["collection"]))
                families.append(took)
        return families
