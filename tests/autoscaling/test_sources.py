"""Metrics sources against real servers: a real Prometheus scraping an exporter of the contract metrics,
and the direct /metrics scrape; decisions follow the load up and down."""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from exporter import Exporter
from helpers import two_pools
from moe_operator.autoscaling import Settings, decide
from moe_operator.autoscaling.mix import capacity_of
from moe_operator.autoscaling.sources.prometheus import PrometheusSource
from moe_operator.autoscaling.sources.scrape import ScrapeSource, bucket_quantile, observation_between, parse_metrics
from require import need

PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def exporter():
    e = Exporter(free_port())
    yield e
    e.close()


@contextlib.contextmanager
def running_prometheus(targets):
    """A real Prometheus scraping ``targets`` ([(port, target labels)]) every second; yields its URL."""
    binary = shutil.which("prometheus") or (PROMETHEUS if os.path.exists(PROMETHEUS) else None)
    if binary is None:
        need("prometheus", "Debian's prometheus server (/usr/bin/prometheus) is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="moe-prom-"))
    port = free_port()
    statics = "".join(f"  - targets: ['127.0.0.1:{p}']\n    labels: {json.dumps(labels)}\n" for p, labels in targets)
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n- job_name: runtime\n  static_configs:\n" + statics)
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}")
            time.sleep(0.2)
        else:
            pytest.fail("prometheus did not become ready in 20 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def prometheus(exporter):
    with running_prometheus([(exporter.server.server_port, {})]) as url:
        yield url


def wait_for(fn, timeout=25.0):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v is not None:
            return v
        time.sleep(0.5)
    return fn()


@pytest.mark.prometheus
@pytest.mark.timeout(120)
def test_prometheus_source_and_decisions_follow_load(exporter, prometheus):
    src = PrometheusSource(prometheus, model="m", window="5s")
    pools = two_pools(h800={"capacity": 1000.0}, ascend={"capacity": 1000.0})
    s = Settings(target_utilization=1.0, scale_down_stabilization_s=0.0, hysteresis=0.0, ttft_p95_s=2.0, tpot_p95_s=0.1)
    exporter.load.update(generated=3000.0, prompt=5000.0)
    exporter.ready.labels("m", "h800").set(3)      # the runtime's count, not the number of capacity series (2)

    def settled(lo, hi):
        o = src.observe()
        return o if o is not None and lo <= o.tokens_per_s["generated"] <= hi else None

    o = wait_for(lambda: settled(2400, 3600))
    assert o is not None, src.last_error
    assert o.tokens_per_s["prompt"] == pytest.approx(5000, rel=0.25)
    assert o.ready == {"h800": 3, "ascend": 1}
    assert o.queue_depth == 0 and o.running == 3
    assert 0.25 <= o.ttft_p95_s <= 0.5 and 0.025 <= o.tpot_p95_s <= 0.05   # bucket holding 0.3 s / 0.03 s
    assert o.queue_wait_p95_s is None              # a runtime without moe_queue_wait_seconds: unknown, not 0
    assert o.requests_per_s == pytest.approx(10, rel=0.3)
    assert set(o.served_by_pool) == {"h800", "ascend"}
    assert abs(o.age(time.time())) < 5
    up = decide(o, pools, s, None, time.time())
    # the policy's own sizing tolerates float noise (mix.EPS); so does this check
    assert capacity_of(pools, up.replicas) >= s.weights.work(o.tokens_per_s) * (1 - 1e-9)
    exporter.load.update(generated=500.0, prompt=0.0)
    o2 = wait_for(lambda: settled(300, 700))
    assert o2 is not None, src.last_error
    down = decide(o2, pools, s, up.history, time.time())
    assert capacity_of(pools, down.replicas) < capacity_of(pools, up.replicas)
    assert not down.held


@pytest.mark.prometheus
@pytest.mark.timeout(120)
def test_two_tenants_with_the_same_model_name_do_not_share_demand():
    """Two namespaces each run a deployment serving model "m" (issue 14 item 9): each autoscaler reads its own
    load only, by the namespace target label Prometheus attaches (the chart's PodMonitor; a scraped series cannot
    override it: honorLabels false)."""
    mine, theirs = Exporter(free_port()), Exporter(free_port())
    try:
        mine.load.update(generated=1000.0, prompt=0.0)
        theirs.load.update(generated=9000.0, prompt=0.0)
        with running_prometheus(
            [
                (mine.server.server_port, {"namespace": "team-a", "moe_deployment": "chat"}),
                (theirs.server.server_port, {"namespace": "team-b", "moe_deployment": "chat"}),
            ]
        ) as url:
            scoped = PrometheusSource(
                url, model="m", window="5s", scope={"namespace": "team-a", "moe_deployment": "chat"}
            )

            def settled():
                o = scoped.observe()
                return o if o is not None and 700 <= o.tokens_per_s["generated"] <= 1300 else None
            o = wait_for(settled)                                     # both tenants summed would read ~10000
            assert o is not None, (scoped.last_error, scoped.observe())
            other = PrometheusSource(
                url, model="m", window="5s", scope={"namespace": "team-c", "moe_deployment": "chat"}
            )
            assert other.observe() is None                                           # nothing of its own: holds
    finally:
        mine.close()
        theirs.close()


@pytest.mark.parametrize("model", ['m"} or vector(1) or {x="', "back\\slash", "new\nline", "q\"uote", "\u00e9\u4e2d"])
def test_label_values_are_escaped_into_promql_string_literals(model):
    """A served model name is user input: it can only ever be a label value, never PromQL (issue 14 item 9)."""
    from moe_operator.autoscaling.sources.prometheus import promql_string, queries, vllm_queries

    lit = promql_string(model)
    assert lit.startswith('"') and lit.endswith('"') and json.loads(lit) == model
    for q in (*queries(model, scope={"namespace": model}).values(), *vllm_queries(model).values()):
        assert f"model={lit}" in q or f"model_name={lit}" in q
        assert 'or vector(1)' not in q.replace(lit, "")


@pytest.mark.prometheus
@pytest.mark.timeout(120)
def test_prometheus_source_reads_the_queue_wait_where_the_runtime_exports_it():
    """moe_queue_wait_seconds (arrival until the request's own prefill began) gives Observation.queue_wait_p95_s,
    with which the policy measures the own-prefill part of TTFT instead of estimating it."""
    exp = Exporter(free_port(), queue_wait_s=0.2)
    try:
        exp.load.update(generated=1000.0)
        with running_prometheus([(exp.server.server_port, {})]) as url:
            src = PrometheusSource(url, model="m", window="5s")

            def with_queue_wait():
                o = src.observe()
                return o if o is not None and o.queue_wait_p95_s is not None else None

            o = wait_for(with_queue_wait)
            assert o is not None, src.last_error
            assert 0.1 <= o.queue_wait_p95_s <= 0.25 and 0.25 <= o.ttft_p95_s <= 0.5   # buckets of 0.2 s / 0.3 s
    finally:
        exp.close()


class FakeProm:
    """``custom_query`` answering each query of ``queries`` by its key: a value, or an empty result for a key in
    ``empty`` (the series do not exist); ``nan`` answers NaN (histogram_quantile over a window without requests)."""

    def __init__(self, q: dict[str, str], values: dict[str, float], empty=()):
        self.by_query = {text: key for key, text in q.items()}
        self.values, self.empty = values, set(empty)

    def custom_query(self, query: str) -> list[dict]:
        key = self.by_query[query]
        if key in self.empty:
            return []
        if key in ("tokens", "tokens_by_pool"):
            return [{"metric": {"kind": "generated", "pool": "cpu"}, "value": [1.0, "100"]}]
        if key == "ready" or (key == "waiting" and key not in self.values):   # a runtime without a router gauge
            return []
        return [{"metric": {}, "value": [1.0, str(self.values.get(key, 1.0))]}]


@pytest.mark.parametrize("engine", ["torch", "vllm"])
def test_queue_wait_is_read_when_present_and_none_without_it(engine):
    from moe_operator.autoscaling.sources.prometheus import queries, vllm_queries

    q = (vllm_queries if engine == "vllm" else queries)("m", "1m")
    src = lambda client: PrometheusSource("http://prom", "m", engine=engine, client=client)  # noqa: E731
    o = src(FakeProm(q, {"queue_wait": 0.42, "ttft": 0.9})).observe()
    assert o is not None and o.queue_wait_p95_s == 0.42 and o.ttft_p95_s == 0.9
    for answer in (FakeProm(q, {}, empty={"queue_wait"}), FakeProm(q, {"queue_wait": float("nan")})):
        s = src(answer)
        o = s.observe()
        assert o is not None, s.last_error                     # an older runtime's observation is still complete
        assert o.queue_wait_p95_s is None and o.ttft_p95_s == 1.0 and o.queue_depth == 1.0


def test_queue_wait_queries():
    from moe_operator.autoscaling.sources.prometheus import queries, vllm_queries

    assert queries("m", "1m", scope={"namespace": "ns"})["queue_wait"] == (
        'histogram_quantile(0.95, sum by (le) (rate(moe_queue_wait_seconds_bucket{namespace="ns", model="m"}[1m])))')
    assert vllm_queries("m", "1m")["queue_wait"] == (
        'histogram_quantile(0.95, sum by (le) (rate({__name__=~"(ray_)?vllm[:_]request_queue_time_seconds_bucket", '
        'model_name="m"}[1m])))')


def test_scrape_reads_the_queue_wait_buckets_like_ttft():
    def text(n_fast: int, n_slow: int) -> str:   # n_fast waits <= 0.1 s, n_slow in (0.1, 0.5]
        out = ['moe_tokens_total{model="m",pool="cpu",kind="generated"} %d' % (10 * (n_fast + n_slow))]
        for le, c in (("0.1", n_fast), ("0.5", n_fast + n_slow), ("+Inf", n_fast + n_slow)):
            out.append(f'moe_queue_wait_seconds_bucket{{model="m",pool="cpu",le="{le}"}} {c}')
            out.append(f'moe_queue_wait_seconds_bucket{{model="other",pool="cpu",le="{le}"}} {100 * c}')
        return "\n".join(out) + "\n"

    prev, cur = parse_metrics(text(10, 0), 0.0, model="m"), parse_metrics(text(20, 10), 2.0, model="m")
    o = observation_between(prev, cur)
    # 20 new waits: 10 <= 0.1 s, 10 in (0.1, 0.5]: p95 = 0.1 + 0.4 x (19 - 10) / 10 = 0.46
    assert o.queue_wait_p95_s == pytest.approx(0.46) and o.ttft_p95_s is None


class VllmLoad:
    """vLLM engine metrics as Ray Serve LLM exports them, in the exporter's registry (so the same Prometheus scrapes
    them): sanitized Ray names (``ray_vllm_*``) for most, the older ``ray_vllm:*`` spelling for generated tokens and
    TTFT, two DP engines, one other model (must not count). Advanced 10 times a second at known rates."""

    def __init__(self, registry, model="mx"):
        from prometheus_client import Counter, Gauge, Histogram

        labels = ["model_name", "engine", "ReplicaId"]
        self.model = model
        self.prompt = Counter("ray_vllm_prompt_tokens", "", labels, registry=registry)
        self.generated = Counter("ray_vllm:generation_tokens", "", labels, registry=registry)
        self.hits = Counter("ray_vllm_prefix_cache_hits", "", labels, registry=registry)
        self.success = Counter("ray_vllm_request_success", "", [*labels, "finished_reason"], registry=registry)
        self.waiting = Gauge("ray_vllm_num_requests_waiting", "", labels, registry=registry)
        self.running = Gauge("ray_vllm_num_requests_running", "", labels, registry=registry)
        self.ttft = Histogram("ray_vllm:time_to_first_token_seconds", "", labels, registry=registry,
                              buckets=(0.1, 0.25, 0.5, 1, 2, 4, float("inf")))
        self.tpot = Histogram("ray_vllm_time_per_output_token_seconds", "", labels, registry=registry,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.2, float("inf")))
        self.queue_time = Histogram("ray_vllm_request_queue_time_seconds", "", labels, registry=registry,
                                    buckets=(0.1, 0.25, 0.5, 1, 2, 4, float("inf")))
        self.rates = {"prompt": 0.0, "hits": 0.0, "generated": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.1):
            for engine in ("0", "1"):                       # two DP ranks split the load
                lv = (self.model, engine, f"r{engine}")
                self.prompt.labels(*lv).inc(self.rates["prompt"] * 0.05)
                self.hits.labels(*lv).inc(self.rates["hits"] * 0.05)
                self.generated.labels(*lv).inc(self.rates["generated"] * 0.05)
                self.success.labels(*lv, "stop").inc(0.5)
                self.waiting.labels(*lv).set(2)
                self.running.labels(*lv).set(4)
                self.ttft.labels(*lv).observe(0.3)
                self.tpot.labels(*lv).observe(0.03)
                self.queue_time.labels(*lv).observe(0.2)
            other = ("other-model", "0", "x")
            self.generated.labels(*other).inc(1000)
            self.waiting.labels(*other).set(50)

    def close(self):
        self._stop.set()


@pytest.mark.prometheus
@pytest.mark.timeout(120)
def test_prometheus_source_reads_vllm_engine_metrics(exporter, prometheus):
    vllm = VllmLoad(exporter.registry)
    try:
        vllm.rates.update(prompt=4000.0, hits=1000.0, generated=600.0)
        src = PrometheusSource(prometheus, model="mx", window="5s", engine="vllm")

        def settled():
            o = src.observe()
            return o if o is not None and 450 <= o.tokens_per_s["generated"] <= 750 else None

        o = wait_for(settled)
        assert o is not None, src.last_error
        assert o.tokens_per_s["cached_prompt"] == pytest.approx(1000, rel=0.25)
        assert o.tokens_per_s["prompt"] == pytest.approx(3000, rel=0.25)    # every prompt token minus the hits
        assert o.queue_depth == 4 and o.running == 8                        # two engines, the other model excluded
        assert o.requests_per_s == pytest.approx(10, rel=0.3)
        assert 0.25 <= o.ttft_p95_s <= 0.5 and 0.025 <= o.tpot_p95_s <= 0.05
        assert 0.1 <= o.queue_wait_p95_s <= 0.25                           # vLLM's queue time, 0.2 s
        assert o.ready == {} and abs(o.age(time.time())) < 5
        assert PrometheusSource(prometheus, model="mx", window="5s").observe() is None   # contract names: none
        missing = PrometheusSource(prometheus, model="nope", window="5s", engine="vllm")
        assert missing.observe() is None and "nope" in missing.last_error
    finally:
        vllm.close()


@pytest.mark.prometheus
def test_prometheus_unreachable_or_unknown_model_holds(exporter, prometheus):
    assert PrometheusSource(f"http://127.0.0.1:{free_port()}", model="m").observe() is None
    src = PrometheusSource(prometheus, model="no-such-model", window="5s")
    assert src.observe() is None and "no-such-model" in src.last_error
    d = decide(src.observe(), two_pools(), Settings(), None, time.time())
    assert d.held


def test_scrape_source_two_scrapes_make_rates(exporter):
    src = ScrapeSource(f"http://127.0.0.1:{exporter.server.server_port}/metrics", model="m")
    exporter.load.update(generated=2000.0)
    assert src.observe() is None            # first scrape: nothing to rate yet
    time.sleep(2.0)
    o = src.observe()
    assert o is not None
    assert o.tokens_per_s["generated"] == pytest.approx(2000, rel=0.2)
    assert o.ready == {"h800": 2, "ascend": 1}
    exporter.ready.labels("m", "h800").set(4)
    exporter.ready.remove("m", "ascend")            # the runtime stopped reporting the pool: unknown, not 0
    time.sleep(0.3)
    assert src.observe().ready == {"h800": 4}
    assert 0.25 <= o.ttft_p95_s <= 0.5
    assert o.queue_wait_p95_s is None                   # no moe_queue_wait_seconds (an older runtime): unknown
    bad = ScrapeSource(f"http://127.0.0.1:{free_port()}/metrics")
    assert bad.observe() is None and "failed" in bad.last_error


def test_ready_replicas_is_the_runtime_gauge_max_over_scraped_ingresses():
    """Two ingresses export the same board count: max, not sum; capacity series do not count as replicas."""
    text = ('moe_ready_replicas{model="m",pool="h800",instance="a"} 3\n'
            'moe_ready_replicas{model="m",pool="h800",instance="b"} 3\n'
            'moe_ready_replicas{model="other",pool="h800"} 9\n'
            'moe_capacity_tokens_per_second{model="m",pool="ascend"} 100\n'
            'moe_tokens_total{model="m",pool="h800",kind="generated"} 10\n')
    snap = parse_metrics(text, 0.0, model="m")
    assert snap.ready == {"h800": 3}
    later = parse_metrics(text.replace("kind=\"generated\"} 10", "kind=\"generated\"} 30"), 2.0, model="m")
    assert observation_between(snap, later).ready == {"h800": 3}


def test_bucket_quantile_matches_promql_interpolation():
    # 100 observations: 50 <= 1 s, 40 in (1, 2], 10 in (2, 4]: p95 = 2 + 2 * (95 - 90) / 10 = 3
    assert bucket_quantile(0.95, {1.0: 50, 2.0: 90, 4.0: 100, float("inf"): 100}) == pytest.approx(3.0)
    assert bucket_quantile(0.5, {1.0: 0, float("inf"): 0}) is None
