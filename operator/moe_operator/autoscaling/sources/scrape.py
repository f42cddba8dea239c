"""Direct scrape of the runtime's /metrics (Prometheus text format): the embedded default (``moectl up``).

Rates need two scrapes: the first call remembers the counters and returns None (the policy holds);
each later call returns rates over the time between the last two scrapes. Quantiles come from the
histogram bucket increases over the same span, interpolated like PromQL's histogram_quantile: TTFT, TPOT and
queue wait (a histogram the runtime does not export, e.g. moe_queue_wait_seconds of a runtime older than it, gives
None, never 0, and the observation is complete without it). Ready replicas per pool come from the runtime's
``moe_ready_replicas`` gauge of the latest scrape (empty without it: the caller then uses its own count).
Requests the router holds because no replica that could take them is ready (gauge ``moe_router_waiting_requests``,
all pools) add to the queue depth; at zero replicas no engine exports anything and, when some are waiting, they alone
make a complete observation (nothing served, the queue = the waiting requests): that wakes a pool from zero.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

from ..observation import Observation

KINDS = ("prompt", "cached_prompt", "generated")
#: histogram bucket series -> the Snapshot field that sums them
HISTOGRAMS = {"moe_ttft_seconds_bucket": "ttft_buckets", "moe_tpot_seconds_bucket": "tpot_buckets",
              "moe_queue_wait_seconds_bucket": "queue_wait_buckets"}


@dataclass
class Snapshot:
    """Counters and gauges of one scrape, summed over replicas, at time ``at`` (Unix s)."""

    at: float
    tokens: dict[str, float] = field(default_factory=dict)                 # kind -> total
    tokens_by_pool: dict[str, dict[str, float]] = field(default_factory=dict)
    requests: float = 0.0
    queue: float = 0.0
    waiting: float = 0.0          # moe_router_waiting_requests, all pools (pool="" = waiting for any pool)
    running: float = 0.0
    ttft_buckets: dict[float, float] = field(default_factory=dict)          # le -> cumulative count
    tpot_buckets: dict[float, float] = field(default_factory=dict)
    queue_wait_buckets: dict[float, float] = field(default_factory=dict)   # absent in runtimes older than it
    ready: dict[str, int] = field(default_factory=dict)  # pool -> moe_ready_replicas (max over series)
    seen: set = field(default_factory=set)


def parse_metrics(text: str, at: float, model: str | None = None) -> Snapshot:
    """Sum the contract metrics in ``text`` (optionally only series with label model=``model``)."""
    snap = Snapshot(at)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = s.labels
            if model is not None and labels.get("model", model) != model:
                continue
            name, v = s.name, float(s.value)
            if not math.isfinite(v):   # +Inf/NaN from one replica is not a figure (int(nan) crashed the mix search)
                continue
            pool = labels.get("pool", "")
            if name == "moe_tokens_total":
                kind = labels.get("kind", "")
                snap.tokens[kind] = snap.tokens.get(kind, 0.0) + v
                per = snap.tokens_by_pool.setdefault(pool, {})
                per[kind] = per.get(kind, 0.0) + v
            elif name == "moe_requests_total":
                snap.requests += v
            elif name == "moe_queue_depth":
                snap.queue += v
            elif name == "moe_router_waiting_requests":
                snap.waiting += v
            elif name == "moe_running_sequences":
                snap.running += v
            elif name in HISTOGRAMS:
                le = float(labels["le"])
                b = getattr(snap, HISTOGRAMS[name])
                b[le] = b.get(le, 0.0) + v
            elif name == "moe_ready_replicas":
                if not math.isnan(v):
                    snap.ready[pool] = max(snap.ready.get(pool, 0), int(v))
            else:
                continue
            snap.seen.add(name.removesuffix("_bucket"))
    return snap


def bucket_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL histogram_quantile over cumulative bucket counts {le: count}; None without observations."""
    if not buckets:
        return None
    items = sorted(buckets.items())
    total = items[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def observation_between(prev: Snapshot, cur: Snapshot) -> Observation | None:
    """Rates and quantiles between two scrapes; None when the span is empty or counters are missing (unless the
    router reports requests waiting: then nothing was served and the waiting requests are the queue)."""
    dt = cur.at - prev.at
    waiting = cur.waiting if "moe_router_waiting_requests" in cur.seen else 0.0
    if dt <= 0 or ("moe_tokens_total" not in cur.seen and waiting <= 0):
        return None
    if "moe_queue_depth" in cur.seen:
        queue = cur.queue + waiting
    else:   # no engine reports a queue (none running): only requests waiting in the router are, if any
        queue = waiting if waiting > 0 else None

    def rate(a: float, b: float) -> float:
        return max(0.0, b - a) / dt if b >= a else b / dt   # a reset counts from zero, like PromQL

    tokens = {k: rate(prev.tokens.get(k, 0.0), cur.tokens.get(k, 0.0)) for k in KINDS}
    by_pool = {p: {k: rate(prev.tokens_by_pool.get(p, {}).get(k, 0.0), v.get(k, 0.0)) for k in KINDS}
               for p, v in cur.tokens_by_pool.items() if p}
    delta = lambda a, b: {le: max(0.0, b[le] - a.get(le, 0.0)) for le in b}  # noqa: E731
    return Observation(
        observed_at=cur.at, tokens_per_s=tokens, requests_per_s=rate(prev.requests, cur.requests),
        queue_depth=queue,
        running=cur.running if "moe_running_sequences" in cur.seen else None,
        ttft_p95_s=bucket_quantile(0.95, delta(prev.ttft_buckets, cur.ttft_buckets)),
        tpot_p95_s=bucket_quantile(0.95, delta(prev.tpot_buckets, cur.tpot_buckets)),
        queue_wait_p95_s=bucket_quantile(0.95, delta(prev.queue_wait_buckets, cur.queue_wait_buckets)),
        ready={p: n for p, n in cur.ready.items() if p}, served_by_pool=by_pool or None)


# Longer than the Serve ingress takes at most (moe_runtime.serve_app.SNAPSHOT_S, 5 s, for its replicas' snapshots;
# the board's moe_ready_replicas runs beside them, bounded by server.BOARD_READY_S, 2 s) plus the proxy's share: when
# a replica is slow the ingress answers at SNAPSHOT_S with what it has (and counts the rest in
# moe_metrics_snapshot_timeouts_total); a scraper that gave up at the same 5 s would see nothing instead.
# Prometheus's own default scrape_timeout is 10 s too.
SCRAPE_TIMEOUT_S = 10.0


class ScrapeSource:
    """Scrapes ``url`` each ``observe()``; ``fetch`` (url -> text) and ``clock`` are injectable for tests.

    A scrape ends within ``timeout_s`` in all (not per read) and reads at most ``max_bytes``
    (moe_operator/boundedhttp.py): a URL that drips its answer or sends an endless one costs one tick its deadline,
    nothing more."""

    def __init__(self, url: str, model: str | None = None, fetch: Callable[[str], str] | None = None,
                 clock: Callable[[], float] = time.time, timeout_s: float = SCRAPE_TIMEOUT_S,
                 max_bytes: int = 16 * 1024 * 1024):
        self.url, self.model, self.clock, self.timeout_s, self.max_bytes = url, model, clock, timeout_s, max_bytes
        self.fetch = fetch or self._http_get
        self._client = None
        self.prev: Snapshot | None = None
        self.last_error: str | None = None

    def _http_get(self, url: str) -> str:
        from moe_operator import boundedhttp

        if self._client is None:   # its own keep-alive connection; TLS verified (SSL_CERT_FILE read now)
            self._client = boundedhttp.client(max_connections=2)
        a = boundedhttp.request(self._client, "GET", url, deadline_s=self.timeout_s, max_bytes=self.max_bytes)
        if a.status != 200:   # the status only: the body of whatever the URL points at is not ours to show
            raise boundedhttp.HttpError(f"GET {url}: HTTP {a.status}")
        return a.text()

    def observe(self) -> Observation | None:
        """The observation since the previous scrape, or None (first scrape, or the scrape failed)."""
        try:
            text = self.fetch(self.url)
            cur = parse_metrics(text, self.clock(), self.model)
        except ValueError:   # the parser quotes the offending line: say only that it is not the format
            self.last_error = f"scrape {self.url}: the answer is not Prometheus text format"
            return None
        except Exception as exc:  # any transport failure is "missing metrics": the policy holds
            self.last_error = f"scrape {self.url} failed: {exc}"
            return None
        prev, self.prev = self.prev, cur
        self.last_error = None
        return observation_between(prev, cur) if prev is not None else None

