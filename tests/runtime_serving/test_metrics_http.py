"""/metrics: contract names and labels (docs/contracts.md section 4), promtool-clean, and counting what was served."""
from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
import openai
from prometheus_client.parser import text_string_to_metric_families

from require import need

CONTRACT = {
    "moe_tokens_total": "counter", "moe_requests_total": "counter", "moe_queue_depth": "gauge",
    "moe_running_sequences": "gauge", "moe_ttft_seconds": "histogram", "moe_tpot_seconds": "histogram",
    "moe_queue_wait_seconds": "histogram",
    "moe_expert_tokens_total": "counter", "moe_kv_cache_bytes": "gauge", "moe_prefix_cache_bytes": "gauge",
    "moe_capacity_tokens_per_second": "gauge",
}
# runtime metrics beyond the contract (the operator does not read them)
BEYOND_CONTRACT = {"moe_prefix_cache_disk_write_failures_total": "counter",
                   "moe_prefix_cache_disk_bad_blocks_total": "counter"}


def scrape(base_url: str) -> tuple[str, dict[tuple[str, tuple], float]]:
    r = httpx.get(base_url + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return r.text, values


def total(values, name: str, **labels) -> float:
    return sum(
        v for (n, lab), v in values.items() if n == name and all(dict(lab).get(k) == x for k, x in labels.items())
    )


def test_metric_names_types_and_labels_are_the_contract(live_server):
    openai.OpenAI(base_url=live_server.base_url + "/v1", api_key="-", max_retries=0).completions.create(
        model="tiny-moe", prompt="warm up", max_tokens=2)
    text, values = scrape(live_server.base_url)
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    # prometheus_client names counter families without the _total suffix
    assert {(n + "_total" if t == "counter" else n): t for n, t in families.items()} == CONTRACT | BEYOND_CONTRACT
    for (name, labels), _ in values.items():
        lab = dict(labels)
        assert lab["model"] == "tiny-moe" and lab["pool"] == "cpu", name
    assert {dict(lbl)["kind"] for n, lbl in values if n == "moe_tokens_total"} == {
        "prompt",
        "cached_prompt",
        "generated",
    }
    assert {dict(lbl)["outcome"] for n, lbl in values if n == "moe_requests_total"} == {
        "ok",
        "error",
        "rejected",
        "cancelled",
    }
    assert {dict(lbl)["tier"] for n, lbl in values if n == "moe_prefix_cache_bytes"} == {"memory", "disk"}
    experts = {(dict(lbl)["layer"], dict(lbl)["expert"]) for n, lbl in values if n == "moe_expert_tokens_total"}
    assert len(experts) == 4 * 8  # tiny model: 4 MoE layers x 8 experts
    assert total(values, "moe_capacity_tokens_per_second") > 0


def test_promtool_accepts_the_exposition(live_server):
    promtool = shutil.which("promtool")
    if promtool is None:
        need("promtool", "Debian's prometheus package provides it (apt-get install prometheus)")
    text, _ = scrape(live_server.base_url)
    run = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "" and run.stderr.strip() == "", "promtool lint warnings: " + run.stdout + run.stderr


def test_counters_move_by_exactly_what_one_request_used(live_server):
    client = openai.OpenAI(base_url=live_server.base_url + "/v1", api_key="-", max_retries=0, timeout=120)
    _, before = scrape(live_server.base_url)
    r = client.completions.create(model="tiny-moe", prompt="Kubernetes schedules pods onto nodes; " * 3,
                                  max_tokens=3, temperature=0)
    _, after = scrape(live_server.base_url)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    u = r.usage
    assert delta("moe_tokens_total", kind="generated") == u.completion_tokens
    assert delta("moe_tokens_total", kind="prompt") == u.model_extra["prompt_cache_miss_tokens"]
    assert delta("moe_tokens_total", kind="cached_prompt") == u.model_extra["prompt_cache_hit_tokens"]
    assert delta("moe_requests_total", outcome="ok") == 1
    assert delta("moe_ttft_seconds_count") == 1
    assert delta("moe_queue_wait_seconds_count") == 1
    # the queue wait is the TTFT less the request's own prefill: never longer
    assert 0 <= delta("moe_queue_wait_seconds_sum") <= delta("moe_ttft_seconds_sum")
    assert delta("moe_tpot_seconds_count") == u.completion_tokens - 1
    # every token (prompt and generated but the last) went through top-2 routing in each of the 4 MoE layers
    routed = delta("moe_expert_tokens_total")
    assert routed == 4 * 2 * (u.model_extra["prompt_cache_miss_tokens"] + u.completion_tokens - 1)
    assert total(after, "moe_queue_depth") == 0 and total(after, "moe_running_sequences") == 0


class _CharTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


def test_queue_wait_is_the_time_to_first_token_less_the_engines_prefill():
    """moe_queue_wait_seconds: arrival at the front (t0, as for TTFT) until the request's own prefill began, i.e.
    the front's time to first token less the prefill_s the engine reports on the first event (a duration: the
    engine may run in another process or node). An engine that does not report it leaves the histogram alone."""
    import asyncio
    import time

    from moe_runtime.engine.api import TokenEvent, Usage
    from moe_runtime.metrics import RuntimeMetrics
    from moe_runtime.server import _Handler

    class Engine:
        tokenizer = _CharTokenizer()
        max_context_tokens = 64

    def events(prefill_s):
        async def stream():
            yield TokenEvent(ord("a"), False, None, prefill_s=prefill_s)
            yield TokenEvent(ord("b"), True, "length", Usage(1, 2, 0, 1))
        return stream()

    metrics = RuntimeMetrics("m")

    async def serve(prefill_s):
        h = _Handler(Engine(), "cpu", metrics, 16)
        return [x async for x in h.events(events(prefill_s), time.perf_counter() - 1.0, 1, None)]

    def read():
        return {(s.name, s.labels.get("le")): s.value
                for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}

    asyncio.run(serve(0.25))
    v = read()
    assert v[("moe_queue_wait_seconds_count", None)] == 1
    assert 0.75 <= v[("moe_queue_wait_seconds_sum", None)] < 0.95           # 1 s to first token - 0.25 s prefill
    assert v[("moe_ttft_seconds_sum", None)] - v[("moe_queue_wait_seconds_sum", None)] == pytest.approx(0.25)
    assert v[("moe_queue_wait_seconds_bucket", "0.5")] == 0 and v[("moe_queue_wait_seconds_bucket", "1.0")] == 1
    asyncio.run(serve(None))                                                  # an engine without prefill_s
    v = read()
    assert v[("moe_queue_wait_seconds_count", None)] == 1 and v[("moe_ttft_seconds_count", None)] == 2


@pytest.mark.timing_sensitive   # a 4 s bound on a 0.3 s wait, in process (no proxy, no Ray)
def test_a_slow_placement_board_never_holds_up_the_scrape(monkeypatch):
    """/metrics asks the placement board for moe_ready_replicas beside the replicas' snapshots, bounded by
    BOARD_READY_S: a board that hangs (restarting) leaves the gauge out of that scrape instead of adding its own
    timeout (10 s) to the snapshots' 5 s, past what a scraper waits. A board that answers gives the gauge."""
    import asyncio
    import time

    from fastapi.testclient import TestClient

    from moe_runtime import server
    from moe_runtime.engine.api import EngineStats

    class Engine:   # /metrics reads stats() only
        model_name, max_context_tokens, tokenizer = "tiny-moe", 64, None

        def stats(self):
            return EngineStats()

    class Board:
        def __init__(self, hang: bool):
            self.hang = hang

        async def ready(self):
            if self.hang:
                await asyncio.sleep(5)   # a restarting board: longer than BOARD_READY_S, short enough to end
            return {"cpu": 2}

    monkeypatch.setattr(server, "BOARD_READY_S", 0.3)
    for hang in (True, False):
        app = server.build_http_app(Engine(), pool="cpu", manage_engine=False, admin=Board(hang))
        with TestClient(app) as http:
            t0 = time.monotonic()
            r = http.get("/metrics")
            took = time.monotonic() - t0
        assert r.status_code == 200 and "moe_tokens_total" in r.text
        if hang:
            assert took < 4 and "moe_ready_replicas" not in r.text, took   # 0.3 s bound; 5 s unbounded
        else:
            assert 'moe_ready_replicas{model="tiny-moe",pool="cpu"} 2.0' in r.text
