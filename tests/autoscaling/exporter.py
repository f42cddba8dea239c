"""A tiny exporter serving the runtime's contract metrics (docs/contracts.md section 4) with a settable load.

A background thread advances the counters 10 times a second at ``tokens_per_s`` and observes TTFT/TPOT
samples, so a real Prometheus (or the scrape source) sees rates the test knows.
"""
from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Exporter:
    def __init__(self, port: int, model: str = "m", pools: dict[str, int] | None = None, ready_gauge: bool = True):
        self.model = model
        self.pools = pools or {"h800": 2, "ascend": 1}
        self.registry = r = CollectorRegistry()
        self.tokens = Counter("moe_tokens", "tokens", ["model", "pool", "kind"], registry=r)
        self.requests = Counter("moe_requests", "requests", ["model", "pool", "outcome"], registry=r)
        self.queue = Gauge("moe_queue_depth", "queue", ["model", "pool"], registry=r)
        self.running = Gauge("moe_running_sequences", "running", ["model", "pool"], registry=r)
        self.ttft = Histogram("moe_ttft_seconds", "ttft", ["model", "pool"], registry=r,
                              buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, float("inf")))
        self.tpot = Histogram("moe_tpot_seconds", "tpot", ["model", "pool"], registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.2, float("inf")))
        self.capacity = Gauge("moe_capacity_tokens_per_second", "cap", ["model", "pool", "replica"], registry=r)
        for pool, n in self.pools.items():
            for i in range(n):
                self.capacity.labels(model, pool, str(i)).set(1000)
        self.ready = Gauge("moe_ready_replicas", "ready", ["model", "pool"], registry=r)   # the runtime's own count
        for pool, n in self.pools.items():
            if ready_gauge:
                self.ready.labels(model, pool).set(n)
        self.load = {"generated": 0.0, "prompt": 0.0, "cached_prompt": 0.0}
        self.ttft_value, self.tpot_value, self.queue_value = 0.3, 0.03, 0.0
        self.server, self.thread = start_http_server(port, addr="127.0.0.1", registry=r)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._run, daemon=True)
        self._ticker.start()

    def _run(self):
        pools = list(self.pools)
        while not self._stop.wait(0.1):
            for kind, rate in self.load.items():
                for pool in pools:  # split evenly over pools
                    self.tokens.labels(self.model, pool, kind).inc(rate * 0.1 / len(pools))
            if self.load["generated"] > 0:
                self.requests.labels(self.model, pools[0], "ok").inc(1)
                self.ttft.labels(self.model, pools[0]).observe(self.ttft_value)
                self.tpot.labels(self.model, pools[0]).observe(self.tpot_value)
            self.queue.labels(self.model, pools[0]).set(self.queue_value)
            self.running.labels(self.model, pools[0]).set(3)

    def close(self):
        self._stop.set()
        self.server.shutdown()
