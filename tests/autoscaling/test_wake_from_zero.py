"""Wake from zero (issue 12, the operator side): at zero replicas no engine exports a metric, so the only demand is
what the router holds, ``moe_router_waiting_requests{model, pool}`` (docs/contracts.md section 4). Both sources
count it as queued demand, and the policy wakes the cheapest fleet on it."""
import math
import time

import pytest

from exporter import RouterAtZero
from helpers import obs, settings, two_pools
from moe_operator.autoscaling.policy import History, decide
from moe_operator.autoscaling.sources.prometheus import PrometheusSource, promql_string, queries, vllm_queries
from moe_operator.autoscaling.sources.scrape import ScrapeSource, observation_between, parse_metrics
from test_sources import running_prometheus, wait_for

AT_ZERO = """\
# HELP moe_router_waiting_requests Requests the router holds because no replica that could take them is ready.
# TYPE moe_router_waiting_requests gauge
moe_router_waiting_requests{model="m",namespace="team-a",pool=""} 2.0
moe_router_waiting_requests{model="m",namespace="team-a",pool="cpu"} 1.0
moe_router_waiting_requests{model="other",namespace="team-a",pool=""} 9.0
"""

SERVING = """\
moe_tokens_total{model="m",pool="cpu",kind="generated"} %d
moe_queue_depth{model="m",pool="cpu"} 4
moe_router_waiting_requests{model="m",pool="gpu"} 2
"""


# -- the direct scrape ------------------------------------------------------------------------------------------------

def test_scrape_turns_the_routers_waiting_requests_at_zero_into_the_queue():
    """The whole exposition of a router at zero: no tokens, no engine queue. Before, no moe_tokens_total meant
    "missing metrics" (a hold, at zero for ever); now the waiting requests of every pool are the queue."""
    o = observation_between(parse_metrics(AT_ZERO, 0.0, model="m"), parse_metrics(AT_ZERO, 5.0, model="m"))
    assert o is not None and o.complete
    assert o.queue_depth == 3.0                                   # pool "" and pool "cpu"; the other model not
    assert o.tokens_per_s == {"prompt": 0.0, "cached_prompt": 0.0, "generated": 0.0}
    assert o.requests_per_s == 0.0 and o.observed_at == 5.0


def test_scrape_adds_the_waiting_requests_to_the_engines_queue():
    """One pool serving (queue 4), another at zero with 2 requests waiting for it: 6 queued."""
    o = observation_between(parse_metrics(SERVING % 100, 0.0, model="m"), parse_metrics(SERVING % 200, 2.0, model="m"))
    assert o.queue_depth == 6.0 and o.tokens_per_s["generated"] == pytest.approx(50.0)


def test_scrape_with_nobody_waiting_and_no_engine_series_still_holds():
    """A router reporting 0 waiting does not stand in for engine series that are missing (a hold, as before):
    missing metrics never scale anything down."""
    idle = AT_ZERO.replace("} 2.0", "} 0").replace("} 1.0", "} 0")
    assert observation_between(parse_metrics(idle, 0.0, model="m"), parse_metrics(idle, 5.0, model="m")) is None


def test_scrape_source_over_http_reads_the_router_at_zero():
    router = RouterAtZero(model="m", waiting={"": 2})
    try:
        src = ScrapeSource(router.url, model="m")
        assert src.observe() is None                               # the first scrape only primes the rates
        time.sleep(0.05)
        o = src.observe()
        assert o is not None, src.last_error
        assert o.queue_depth == 2.0 and o.complete
    finally:
        router.close()


# -- Prometheus -------------------------------------------------------------------------------------------------------

class Answers:
    """A Prometheus client answering each query of ``q`` by its key from ``results`` (a key absent: no series)."""

    def __init__(self, q: dict[str, str], results: dict[str, list[dict]]):
        self.by_query = {text: key for key, text in q.items()}
        self.results = results
        self.asked: list[str] = []

    def custom_query(self, query: str) -> list[dict]:
        self.asked.append(query)
        return self.results.get(self.by_query[query], [])


def scalar(v: float) -> list[dict]:
    return [{"metric": {}, "value": [1000.0, str(v)]}]


@pytest.mark.parametrize("engine", ["torch", "vllm"])
def test_prometheus_turns_the_routers_waiting_requests_at_zero_into_the_queue(engine):
    scope = {"namespace": "team-a"}
    q = (vllm_queries if engine == "vllm" else queries)("m", "1m", scope=scope)
    client = Answers(q, {"waiting": scalar(2), "freshness": scalar(990.0)})   # nothing else exists at zero
    src = PrometheusSource("http://prom", "m", engine=engine, client=client, scope=scope, clock=lambda: 1000.0)
    o = src.observe()
    assert o is not None, src.last_error
    assert o.complete and o.queue_depth == 2.0 and o.total_tokens_per_s == 0.0 and o.observed_at == 990.0
    assert q["waiting"] in client.asked
    # with engine series present the waiting requests add to their queue
    busy = {"queue": scalar(4), "waiting": scalar(2), "generated": scalar(50),
            "tokens": [{"metric": {"kind": "generated"}, "value": [1000.0, "50"]}]}
    o = PrometheusSource("http://prom", "m", engine=engine, client=Answers(q, busy), scope=scope).observe()
    assert o.queue_depth == 6.0 and o.tokens_per_s["generated"] == 50.0
    # nobody waiting and no engine series: still "no series" (a hold), not a measured zero
    idle = PrometheusSource("http://prom", "m", engine=engine, client=Answers(q, {"waiting": scalar(0)}), scope=scope)
    assert idle.observe() is None and "no " in idle.last_error


@pytest.mark.parametrize("model", ['m"} or vector(1) or {x="', "back\\slash", "\u00e9"])
def test_the_waiting_query_is_scoped_and_escaped_like_the_others(model):
    """Tenant scoping (namespace) and label escaping apply to the router's series too: the served model name is user
    input and can only ever be a label value; for vLLM the router's series carry the contract's ``model`` label."""
    lit, ns = promql_string(model), promql_string("team-a")
    for qs in (queries(model, "1m", scope={"namespace": "team-a"}),
               vllm_queries(model, "1m", scope={"namespace": "team-a"})):
        assert qs["waiting"] == f"sum(moe_router_waiting_requests{{namespace={ns}, model={lit}}})"
        assert f"timestamp(moe_router_waiting_requests{{namespace={ns}, model={lit}}})" in qs["freshness"]


@pytest.mark.prometheus
@pytest.mark.timeout(120)
def test_real_prometheus_reads_only_this_namespaces_router_at_zero():
    """A real Prometheus scrapes two routers at zero serving the same (hostile) model name in two namespaces; each
    source reads its own waiting requests, by the namespace target label, for both engines."""
    model = 'm"q\\x'
    mine = RouterAtZero(model=model, waiting={"": 2})
    theirs = RouterAtZero(model=model, waiting={"": 50, "cpu": 7})
    try:
        with running_prometheus([(mine.server.server_port, {"namespace": "team-a"}),
                                 (theirs.server.server_port, {"namespace": "team-b"})]) as url:
            for engine in ("torch", "vllm"):
                src = PrometheusSource(url, model=model, window="5s", engine=engine, scope={"namespace": "team-a"})
                o = wait_for(lambda: src.observe())
                assert o is not None, src.last_error
                assert o.queue_depth == 2.0 and o.total_tokens_per_s == 0.0, o     # 59 with team-b's
                assert abs(o.age(time.time())) < 10
            other = PrometheusSource(url, model=model, window="5s", scope={"namespace": "team-c"})
            assert other.observe() is None
    finally:
        mine.close()
        theirs.close()


# -- the policy -------------------------------------------------------------------------------------------------------

def _idle_to_zero(s):
    """A fleet that served, went idle and was scaled to zero by the policy itself; (history, last time)."""
    pools = two_pools()
    h = decide(obs(0, 1000), pools, s, None, 0).history
    t = 0
    for t in range(30, 1200, 30):
        d = decide(obs(t, 0, rps=0.0, ready=h.desired), pools, s, h, t)
        h = d.history
    assert sum(d.replicas.values()) == 0, d.reasons
    return pools, h, t


@pytest.mark.parametrize("budget", [{}, {"max_hourly_cost": 100.0}, {"max_cost_per_million": 0.5}])
def test_queued_requests_at_zero_wake_the_cheapest_fleet_at_the_next_tick(budget):
    """queue 3, nothing served, no tokens/s: the arrival is the queue's growth at a replica-second per request, so
    the need is finite and positive, and the decision is one replica of the cheapest pool (ascend, $16/h); it holds
    while the requests keep waiting through the cold start (the queue then grows no more: the backlog keeps it)."""
    s = settings(scale_to_zero=True, idle_s=600.0, **budget)
    pools, h, t = _idle_to_zero(s)
    zero = {"ascend": 0, "h800": 0}
    for k in range(1, 5):
        d = decide(obs(t + 30 * k, 0, rps=0.0, queue=3, ready=zero), pools, s, h, t + 30 * k)
        h = d.history
        assert d.replicas == {"ascend": 1, "h800": 0}, (k, d.reasons)
        assert math.isfinite(d.need) and d.need > 0 and not d.held
        assert d.cost_per_hour == min(p.price_per_hour for p in pools)
        assert d.demand_tokens_per_s is not None and math.isfinite(d.demand_tokens_per_s)


def test_nothing_waiting_at_zero_stays_at_zero():
    s = settings(scale_to_zero=True, idle_s=600.0)
    pools, h, t = _idle_to_zero(s)
    for k in range(1, 5):
        d = decide(obs(t + 30 * k, 0, rps=0.0, queue=0, ready={"ascend": 0, "h800": 0}), pools, s, h, t + 30 * k)
        h = d.history
        assert sum(d.replicas.values()) == 0, d.reasons


def test_a_fresh_history_at_zero_wakes_too():
    """After an operator restart the History is rebuilt with desired 0 and no queue reading: the queue is taken as
    built during one interval."""
    pools = two_pools()
    d = decide(obs(0, 0, queue=3, rps=0.0), pools, settings(scale_to_zero=True),
               History(desired={"ascend": 0, "h800": 0}), 0)
    assert d.replicas == {"ascend": 1, "h800": 0} and math.isfinite(d.need) and d.need > 0
