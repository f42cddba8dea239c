"""`moectl replay` against the project's real tiny model (torch engine behind the same build_http_app that Ray
Serve runs, under uvicorn on a loopback port): the figures it measures agree with the trace and with the server's
own counters, --max-in-flight / --duration / timeouts bound a run, Ctrl-C keeps what was measured, bad input is
one `error:` line and exit 2. Only error paths the real server cannot produce on demand (HTTP 500, a server that
never answers) use a small fake OpenAI server, named as such below."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from moe_operator.cli.main import main
from moe_operator.errors import UserError
from moe_operator.loadtest.replay import WORDS, normalize_endpoint, plan_requests, summarize
from require import need
from runtime_serving.serving_support import free_port, serve_uvicorn

BLOCK = 16                     # the server's prefix-cache block (tokens)
SCALE = 0.05                   # 512-token trace blocks -> 26 tokens: every shared trace block shares a server block


@pytest.fixture(scope="module")
def tiny():
    """The real tiny engine (CPU, one torch thread: the test machine's cores are shared) on a loopback port."""
    try:
        import torch

        from moe_runtime.config import RuntimeConfig
        from moe_runtime.engine import build_engine
        from moe_runtime.server import build_http_app
    except ImportError as exc:
        need("runtime extras (torch, fastapi, uvicorn)", str(exc))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = RuntimeConfig(model_name="tiny-moe", model_source="builtin://tiny-moe", device="cpu", max_batch_size=4,
                        max_queue=64, max_context_tokens=1024, cache={"block_tokens": BLOCK, "memory_bytes": 16 << 20})
    url, server, thread = serve_uvicorn(build_http_app(build_engine(cfg), pool="cpu"))
    yield url
    server.should_exit = True
    thread.join(30)
    torch.set_num_threads(threads)


def _metrics(url: str) -> dict[str, float]:
    import httpx

    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        m = re.match(
            r'^(moe_tokens_total|moe_requests_total|moe_ttft_seconds_sum|moe_ttft_seconds_count)\{(.*)\} (\S+)$', line
        )
        if m:
            label = re.search(r'(kind|outcome)="([^"]+)"', m.group(2))
            out[m.group(1) + (f":{label.group(2)}" if label else "")] = float(m.group(3))
    return out


def mooncake(path: Path, rows: list[tuple[float, int, int, list[int]]]) -> Path:
    """A Mooncake JSONL trace from (timestamp ms, input_length, output_length, hash_ids) rows."""
    path.write_text(
        "".join(
            json.dumps({"timestamp": t, "input_length": n_in, "output_length": n_out, "hash_ids": ids}) + "\n"
            for t, n_in, n_out, ids in rows
        )
    )
    return path


def conversation(path: Path, n: int = 12, gap_ms: int = 250) -> Path:
    """n requests, gap_ms apart: every one starts with system block 0, every second one continues the previous."""
    rows, nxt = [], 1
    for i in range(n):
        ids = [0] + ([nxt - 3, nxt - 2] if i % 2 and nxt > 3 else []) + [nxt, nxt + 1, nxt + 2]
        nxt += 3
        rows.append((i * gap_ms, len(ids) * 512 - 100, 200 + 40 * i, ids))
    return mooncake(path, rows)


# --- pure parts


def test_prompts_share_exactly_the_trace_blocks(tmp_path):
    f = mooncake(tmp_path / "t.jsonl", [(0, 1100, 40, [7, 8, 9]), (1000, 1200, 7, [7, 8, 5]), (2000, 600, 1, [4, 7])])
    trace, planned = plan_requests(f, speedup=2.0, scale=0.25)
    a, b, c = ([w for w in p.text.split(" ") if w] for p in planned)
    assert [p.prompt_tokens for p in planned] == [275, 300, 150] and [len(a), len(b), len(c)] == [275, 300, 150]
    assert a[:256] == b[:256] and a[256:] != b[256:]            # blocks 7, 8 shared: 2 x 128 words
    assert [p.cached_hint for p in planned] == [0, 256, 0]       # as the trace's prefix cache counts them
    assert c[:128] != a[:128] and c[128:150] == a[:22]           # block 7 second in c: same words, not a prefix
    assert [p.max_tokens for p in planned] == [10, 2, 1] and [p.arrival_s for p in planned] == [0.0, 0.5, 1.0]
    assert set(a) <= set(WORDS) and planned[0].text.startswith(" ")
    _, cut = plan_requests(f, scale=0.25, duration_s=1.5, max_prompt_tokens=100)
    assert len(cut) == 2 and [p.prompt_tokens for p in cut] == [100, 100] and cut[1].cached_hint == 100


def test_azure_prompts_are_distinct_from_the_first_words(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" +
                 "".join(f"2023-11-16 18:17:0{i}.0,400,20\n" for i in range(5)))
    _, planned = plan_requests(f, scale=0.1)
    assert len({p.text[:40] for p in planned}) == 5 and all(p.cached_hint == 0 for p in planned)
    assert [p.prompt_tokens for p in planned] == [40] * 5 and planned[0].max_tokens == 2


@pytest.mark.parametrize("url,base", [("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
                                      ("http://localhost:8000/v1/", "http://localhost:8000/v1"),
                                      ("https://h.example/openai/v1", "https://h.example/openai/v1")])
def test_endpoint_urls(url, base):
    assert normalize_endpoint(url) == base


def test_windows_spread_tokens_over_the_decode():
    recs = [{"i": 0, "arrival_s": 0.0, "sent_s": 0.0, "first_token_s": 5.0, "end_s": 15.0, "ttft_s": 5.0, "tpot_s": 0.1,
             "prompt_tokens": 100, "cached_prompt_tokens": None, "cached_prompt_tokens_hint": 0, "max_tokens": 101,
             "completion_tokens": 101, "outcome": "ok"},
            {"i": 1, "arrival_s": 12.0, "sent_s": None, "first_token_s": None, "end_s": None, "ttft_s": None,
             "tpot_s": None, "prompt_tokens": 10, "cached_prompt_tokens": None, "cached_prompt_tokens_hint": 0,
             "max_tokens": 5, "completion_tokens": 0, "outcome": "rejected_client"}]
    windows, s = summarize(recs, window_s=10.0)
    assert [w["output_tokens_per_s"] for w in windows] == [5.05, 5.05]     # 101 tokens over [5, 15]
    assert [w["prompt_tokens_per_s"] for w in windows] == [10.0, 0.0]
    assert [(w["requests"], w["ok"], w["rejected_client"]) for w in windows] == [(1, 1, 0), (1, 0, 1)]
    assert s["ok"] == 1 and s["rejected_client"] == 1 and s["ttft_p50_s"] == 5.0 and s["completion_tokens"] == 101
    with pytest.raises(UserError, match="--window"):
        summarize(recs, window_s=0)


# --- against the real tiny model


@pytest.mark.timing_sensitive   # the client keeps to the schedule within 2 s and adds < 1 s to the server's TTFT
def test_replay_measures_the_real_tiny_model_consistently(tiny, tmp_path, capsys):
    trace = conversation(tmp_path / "conv.jsonl")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    before = _metrics(tiny)
    rc = main(
        [
            "replay",
            "--trace",
            str(trace),
            "--endpoint",
            tiny,
            "--scale-tokens",
            str(SCALE),
            "--out-json",
            str(out),
            "--plot",
            str(png),
            "--window",
            "2",
            "--timeout",
            "120",
        ]
    )
    after = _metrics(tiny)
    assert rc == 0
    assert "replay of" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    reqs = doc["requests"]
    _, planned = plan_requests(trace, scale=SCALE)
    assert doc["version"] == 1 and doc["endpoint"]["model"] == "tiny-moe" and not doc["interrupted"]
    assert len(reqs) == len(planned) == doc["trace"]["scheduled"] == 12
    assert [r["outcome"] for r in reqs] == ["ok"] * 12, [r["error"] for r in reqs]
    for r, p in zip(reqs, planned):
        assert r["i"] == p.i and r["arrival_s"] == pytest.approx(p.arrival_s)
        assert r["prompt_tokens"] == p.prompt_tokens == r["prompt_tokens_target"]    # one token a word, on the wire
        assert 1 <= r["completion_tokens"] <= p.max_tokens == r["max_tokens"]          # EOS may end an answer early
        assert r["arrival_s"] - 0.01 <= r["sent_s"] <= r["arrival_s"] + 2.0
        assert r["sent_s"] < r["first_token_s"] <= r["end_s"]
        assert r["ttft_s"] == pytest.approx(r["first_token_s"] - r["sent_s"], abs=1e-4) and r["ttft_s"] > 0
        if r["completion_tokens"] >= 2:
            assert r["tpot_s"] > 0
            assert r["tpot_s"] * (r["completion_tokens"] - 1) == pytest.approx(
                r["end_s"] - r["first_token_s"], abs=1e-3
            )
        assert 0 <= r["cached_prompt_tokens"] <= r["cached_prompt_tokens_hint"]       # hits only where the trace shares
    assert sum(r["cached_prompt_tokens"] for r in reqs) > 0      # shared trace blocks were real prefix-cache hits
    # the server counted exactly what the client measured
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["moe_tokens_total:generated"] == sum(r["completion_tokens"] for r in reqs)
    assert delta["moe_tokens_total:cached_prompt"] == sum(r["cached_prompt_tokens"] for r in reqs)
    assert delta["moe_tokens_total:prompt"] + delta["moe_tokens_total:cached_prompt"] == sum(
        r["prompt_tokens"] for r in reqs
    )
    assert delta["moe_requests_total:ok"] == 12
    server_ttft = delta["moe_ttft_seconds_sum"] / delta["moe_ttft_seconds_count"]
    client_ttft = float(np.mean([r["ttft_s"] for r in reqs]))
    assert server_ttft - 0.01 <= client_ttft <= server_ttft + 1.0   # the client adds HTTP and SSE, little else
    s, windows = doc["summary"], doc["windows"]
    assert s["ok"] == 12 and s["completion_tokens"] == sum(r["completion_tokens"] for r in reqs)
    assert sum(w["requests"] for w in windows) == 12
    assert sum(w["output_tokens_per_s"] for w in windows) * 2 == pytest.approx(s["completion_tokens"], rel=1e-3)
    assert s["peak_in_flight"] >= 1 and s["ttft_p50_s"] <= s["ttft_p95_s"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_max_in_flight_and_duration_bound_the_run(tiny, tmp_path):
    rows = [(0, 1024, 2000, [10 * i]) for i in range(20)] + [(5000 + i, 512, 20, [999]) for i in range(5)]
    trace = mooncake(tmp_path / "burst.jsonl", rows)      # 20 arrivals at once, 5 more after the duration
    out = tmp_path / "r.json"
    t0 = time.monotonic()
    rc = main(["replay", "--trace", str(trace), "--endpoint", tiny, "--scale-tokens", str(SCALE), "--duration", "4",
               "--max-in-flight", "3", "--out-json", str(out), "--timeout", "120"])
    took = time.monotonic() - t0
    doc = json.loads(out.read_text())
    reqs = doc["requests"]
    assert rc == 0 and len(reqs) == 20 and all(r["arrival_s"] < 4 for r in reqs)     # the late 5 were never sent
    sent = [r for r in reqs if r["sent_s"] is not None]
    rejected = [r for r in reqs if r["outcome"] == "rejected_client"]
    assert len(sent) == 3 and len(rejected) == 17 == doc["summary"]["rejected_client"]   # over the cap: not queued
    assert all(r["sent_s"] is None and r["error"] for r in rejected)
    # never more than 3 open at once, measured from the records themselves
    events = sorted([(r["sent_s"], 1) for r in sent] + [(r["end_s"], -1) for r in sent], key=lambda e: (e[0], e[1]))
    assert max(np.cumsum([d for _, d in events])) <= 3 and doc["summary"]["peak_in_flight"] == 3
    assert took < 120 and doc["settings"]["max_in_flight"] == 3 and doc["trace"]["duration_s"] == 4


@pytest.mark.timing_sensitive   # stops within 20 s of the signal
def test_ctrl_c_stops_cleanly_and_writes_what_was_measured(tiny, tmp_path):
    rows = [(i * 100, 1024, 4000, [i]) for i in range(300)]      # 30 s of long answers: far more than 3 s
    trace = mooncake(tmp_path / "long.jsonl", rows)
    out = tmp_path / "r.json"
    generated = _metrics(tiny).get("moe_tokens_total:generated", 0)
    proc = subprocess.Popen([sys.executable, "-m", "moe_operator.cli.main", "replay", "--trace", str(trace),
                             "--endpoint", tiny, "--scale-tokens", str(SCALE), "--max-in-flight", "4",
                             "--out-json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _metrics(tiny).get("moe_tokens_total:generated", 0) == generated:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)       # tokens are flowing: requests of 200 tokens are in flight
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20 and proc.returncode == 130, err
    assert "Traceback" not in err
    doc = json.loads(out.read_text())
    assert doc["interrupted"] and 0 < len(doc["requests"]) < 300
    outcomes = {r["outcome"] for r in doc["requests"]}
    assert "cancelled" in outcomes and outcomes <= {"ok", "cancelled", "rejected_client", "error"}
    cancelled = [r for r in doc["requests"] if r["outcome"] == "cancelled"]
    assert all(r["end_s"] is not None and r["sent_s"] is not None for r in cancelled)


# --- bad input and error paths


def test_bad_input_is_one_error_line_and_exit_2(tiny, tmp_path, capsys):
    trace = conversation(tmp_path / "c.jsonl", n=2)
    cases = [
        (["--trace", str(tmp_path / "missing.jsonl"), "--endpoint", tiny], "does not exist"),
        (["--trace", str(trace), "--endpoint", "ftp://127.0.0.1/v1"], "not an http(s) URL"),
        (["--trace", str(trace), "--endpoint", "http://127.0.0.1:99999"], "invalid port"),
        (["--trace", str(trace), "--endpoint", tiny, "--speedup", "0"], "--speedup must be > 0"),
        (["--trace", str(trace), "--endpoint", tiny, "--scale-tokens", "-1"], "--scale-tokens must be > 0"),
        (["--trace", str(trace), "--endpoint", tiny, "--max-in-flight", "0"], "--max-in-flight"),
        (["--trace", str(trace), "--endpoint", tiny, "--duration", "0"], "--duration"),
        (["--trace", str(trace), "--endpoint", tiny, "--model", "gpt-4"], "is not served"),
        (["--trace", str(trace), "--endpoint", f"http://127.0.0.1:{free_port()}"], "connection failed"),
        # checked before the run: an hour of measurements must not be lost to a typo in the output path
        (["--trace", str(trace), "--endpoint", tiny, "--out-json", str(tmp_path / "no" / "x.json")], "does not exist"),
        (["--trace", str(trace), "--endpoint", tiny, "--plot", str(tmp_path / "no" / "x.png")], "does not exist"),
    ]
    for argv, match in cases:
        rc = main(["replay", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and match in err[0], (argv, err)


def test_unreachable_endpoint_is_no_traceback(tmp_path):
    trace = conversation(tmp_path / "c.jsonl", n=2)
    p = subprocess.run([sys.executable, "-m", "moe_operator.cli.main", "replay", "--trace", str(trace), "--endpoint",
                        f"http://127.0.0.1:{free_port()}/v1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "cannot use http://127.0.0.1" in p.stderr, p.stderr


@pytest.fixture
def fake_openai():
    """A FAKE OpenAI server (not the runtime): /v1/models works; completion n answers HTTP 500 when n % 3 == 0,
    never answers when n % 3 == 1, streams one token otherwise. Counts completion calls to show no retries."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
    except ImportError as exc:
        need("fastapi", str(exc))
    import asyncio

    app = FastAPI()
    calls = []

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        n = len(calls)
        calls.append(await request.json())
        if n % 3 == 0:
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        if n % 3 == 1:
            await asyncio.sleep(30)

        async def body():
            yield (
                'data: {"id":"c","object":"text_completion","created":0,"model":"fake",'
                '"choices":[{"index":0,"text":"x","finish_reason":"length"}]}\n\n'
            )
            yield "data: [DONE]\n\n"
        return StreamingResponse(body(), media_type="text/event-stream")

    url, server, thread = serve_uvicorn(app)
    yield url, calls
    server.should_exit = True
    server.force_exit = True
    thread.join(10)


def test_server_errors_and_timeouts_are_recorded_once_each(fake_openai, tmp_path):
    url, calls = fake_openai
    trace = mooncake(tmp_path / "t.jsonl", [(i * 50, 600, 40, [i]) for i in range(6)])
    out = tmp_path / "r.json"
    t0 = time.monotonic()
    rc = main(["replay", "--trace", str(trace), "--endpoint", url, "--timeout", "1.5", "--out-json", str(out),
               "--ignore-eos"])
    assert rc == 0 and time.monotonic() - t0 < 25   # the never-answering calls end at their timeout
    reqs = json.loads(out.read_text())["requests"]
    assert len(calls) == 6, [r["error"] for r in reqs]    # no retries
    assert all(c["max_tokens"] == 40 and c["stream"] and c["ignore_eos"] is True for c in calls)
    by_outcome = {o: sorted(r["i"] for r in reqs if r["outcome"] == o) for o in ("ok", "error", "timeout")}
    assert len(by_outcome["error"]) == 2 and len(by_outcome["timeout"]) == 2 and len(by_outcome["ok"]) == 2
    assert all("HTTP 500: boom" == r["error"] for r in reqs if r["outcome"] == "error")
    for r in reqs:
        if r["outcome"] == "timeout":
            assert 1.45 <= r["end_s"] - r["sent_s"] < 10 and r["first_token_s"] is None
        if r["outcome"] == "ok":   # no usage chunk from this server: text chunks are counted instead
            assert r["completion_tokens"] == 1 and r["tpot_s"] is None and r["ttft_s"] > 0
