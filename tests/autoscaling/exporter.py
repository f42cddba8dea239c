"""A tiny exporter serving the runtime's contract metrics (docs/contracts.md section 4) with a settable load.

While ``load["generated"] > 0`` every request observes ``ttft_s`` and ``tpot_s``: the TTFT/TPOT p95 a scraper
reads (the policy's SLO guard and latency reserve) is an input of the test. With the buckets below a fixed
TTFT of 0.3 s reads as p95 0.4875 s (PromQL interpolation in (0.25, 0.5]), 0.02 s as 0.02425 s; a TPOT of 0.03 s
as 0.04875 s, 0.002 s as 0.002425 s. With ``queue_wait_s`` set each request also observes it in
``moe_queue_wait_seconds`` (same buckets as TTFT: 0.2 s reads as p95 0.2425 s); unset (the default), the histogram
is not exported at all, as by a runtime older than it.

How the counters advance:
  * default: a background thread advances them 10 times a second by ``rate x 0.1`` and observes one request per
    tick (10 requests/s). A thread starved of CPU ticks less often, so a busy machine reads lower rates than set.
  * ``exact_rates=True``: no thread; the counters are the exact integral of ``load`` over monotonic time, brought up
    to date on every scrape and before every change of ``load``, and requests arrive at 10/s the same way: a
    scraper reads the rates the test set however late this process gets the CPU. Tests whose decisions depend on
    the rates (the operator's autoscaler tests) use it.
"""
from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REQUESTS_PER_S = 10.0


class _Registry(CollectorRegistry):
    """A registry that calls ``before_collect`` before every collection (each scrape)."""

    def __init__(self, before_collect):
        super().__init__()
        self._before_collect = before_collect

    def collect(self):
        self._before_collect()
        yield from super().collect()


class _Load(dict):
    """``Exporter.load``: tokens/s per kind; with exact rates, the old rates are accounted up to now before a change."""

    def __init__(self, advance, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._advance = advance

    def __setitem__(self, key, value):
        self._advance()
        super().__setitem__(key, value)

    def update(self, *args, **kwargs):
        self._advance()
        super().update(*args, **kwargs)


class Exporter:
    def __init__(self, port: int, model: str = "m", pools: dict[str, int] | None = None, ready_gauge: bool = True,
                 ttft_s: float = 0.3, tpot_s: float = 0.03, exact_rates: bool = False,
                 queue_wait_s: float | None = None):
        self.model = model
        self.pools = pools or {"h800": 2, "ascend": 1}
        self.exact_rates = exact_rates
        self._lock = threading.RLock()
        self._at = time.monotonic()
        self._requests_due = 0.0
        self.registry = r = _Registry(self._advance)
        self.tokens = Counter("moe_tokens", "tokens", ["model", "pool", "kind"], registry=r)
        self.requests = Counter("moe_requests", "requests", ["model", "pool", "outcome"], registry=r)
        self.queue = Gauge("moe_queue_depth", "queue", ["model", "pool"], registry=r)
        self.running = Gauge("moe_running_sequences", "running", ["model", "pool"], registry=r)
        self.ttft = Histogram("moe_ttft_seconds", "ttft", ["model", "pool"], registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, float("inf")))
        self.queue_wait = None if queue_wait_s is None else Histogram(
            "moe_queue_wait_seconds", "queue wait", ["model", "pool"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, float("inf")))
        self.tpot = Histogram("moe_tpot_seconds", "tpot", ["model", "pool"], registry=r,
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, float("inf")))
        self.capacity = Gauge("moe_capacity_tokens_per_second", "cap", ["model", "pool", "replica"], registry=r)
        for pool, n in self.pools.items():
            for i in range(n):
                self.capacity.labels(model, pool, str(i)).set(1000)
        self.ready = Gauge("moe_ready_replicas", "ready", ["model", "pool"], registry=r)   # the runtime's own count
        for pool, n in self.pools.items():
            if ready_gauge:
                self.ready.labels(model, pool).set(n)
        self.ttft_value, self.tpot_value, self.queue_value = ttft_s, tpot_s, 0.0   # settable, like ``load``
        self.queue_wait_value = queue_wait_s
        self.load = _Load(self._advance, generated=0.0, prompt=0.0, cached_prompt=0.0)
        self._gauges()
        self.server, self.thread = start_http_server(port, addr="127.0.0.1", registry=r)
        self._stop = threading.Event()
        self._ticker = None
        if not exact_rates:
            self._ticker = threading.Thread(target=self._run, daemon=True)
            self._ticker.start()

    def _add(self, seconds: float, requests: int):
        """Count ``seconds`` of the current load and ``requests`` requests (each observing TTFT, TPOT and, when
        exported, the queue wait)."""
        pools = list(self.pools)
        for kind, rate in dict.items(self.load):
            for pool in pools:  # split evenly over pools
                self.tokens.labels(self.model, pool, kind).inc(rate * seconds / len(pools))
        if requests:
            self.requests.labels(self.model, pools[0], "ok").inc(requests)
            for _ in range(requests):
                self.ttft.labels(self.model, pools[0]).observe(self.ttft_value)
                self.tpot.labels(self.model, pools[0]).observe(self.tpot_value)
                if self.queue_wait is not None:
                    self.queue_wait.labels(self.model, pools[0]).observe(self.queue_wait_value)

    def _gauges(self):
        first = next(iter(self.pools))
        self.queue.labels(self.model, first).set(self.queue_value)
        self.running.labels(self.model, first).set(3)

    def _advance(self):
        """Exact rates: account the load from the last update to now (before each scrape and load change)."""
        if not self.exact_rates:
            return
        with self._lock:
            now = time.monotonic()
            dt, self._at = max(0.0, now - self._at), now
            n = 0
            if dict.get(self.load, "generated", 0.0) > 0:
                self._requests_due += REQUESTS_PER_S * dt
                n = int(self._requests_due)
                self._requests_due -= n
            self._add(dt, n)
            self._gauges()

    def _run(self):
        while not self._stop.wait(0.1):
            self._add(0.1, 1 if self.load["generated"] > 0 else 0)
            self._gauges()

    def close(self):
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


class RouterAtZero:
    """What the deployment's router serves at /metrics while no replica runs: no engine exports anything, so its
    only series is the gauge ``moe_router_waiting_requests{model, pool}`` (docs/contracts.md section 4) of the
    requests it holds; ``pool=""`` = waiting for any pool. ``waiting``: pool -> requests, settable
    (``set_waiting``); a pool set to None is removed. The runtime cannot run here: this is the part mocked."""

    def __init__(self, port: int = 0, model: str = "m", waiting: dict[str, float] | None = None):
        self.model = model
        self.registry = CollectorRegistry()
        self.gauge = Gauge("moe_router_waiting_requests", "Requests the router holds because no replica that could "
                           "take them is ready.", ["model", "pool"], registry=self.registry)
        self.set_waiting(waiting or {})
        self.server, self.thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/metrics"

    def set_waiting(self, waiting: dict[str, float | None]) -> None:
        for pool, n in waiting.items():
            if n is None:
                self.gauge.remove(self.model, pool)
            else:
                self.gauge.labels(self.model, pool).set(n)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
