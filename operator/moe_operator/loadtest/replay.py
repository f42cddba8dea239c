"""Replay a request trace against a live OpenAI-compatible endpoint and measure what the endpoint really does.

Why: the simulator (``moectl simulate``) models a replica; this drives a real one with the same trace so that the
model can be checked and calibrated (``moectl simulate --calibrate``, ``autoscaling/simulate/calibrate.py``).

Each trace request becomes one streaming ``/v1/completions`` call made with the official ``openai`` client:
prompt of (computed + cached) x ``scale`` tokens, ``max_tokens`` = generated x ``scale`` (both at least 1).
Prompts are words that are one token each in byte-level BPE vocabularies; a Mooncake request's text is built
block by block from its ``hash_ids`` (each 512-token block, scaled, derived from its hash id alone), so requests
that share a prefix in the trace share it on the wire and exercise the server's prefix cache.

Bounded: ``duration_s`` cuts the trace, at most ``max_in_flight`` requests are open (an arrival over the cap is
recorded as ``rejected_client``, never queued), each request has a timeout, the client never retries, and a stop
event (Ctrl-C in the CLI) cancels what is in flight and keeps every measurement taken so far.
"""
from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from moe_operator.autoscaling.simulate.traces import MOONCAKE_BLOCK_TOKENS, Trace, load_trace
from moe_operator.errors import UserError

JSON_VERSION = 1
OUTCOMES = ("ok", "error", "timeout", "rejected_client", "cancelled")
DEFAULT_WINDOW_S = 30.0
PROBE_TIMEOUT_S = 10.0

# Words that are one token each (with their leading space) in the tiny model's byte-level BPE and in GPT-style
# vocabularies, so a prompt of N words is about N tokens on the wire.
WORDS = (
    "the", "of", "and", "to", "a", "is", "model", "expert", "token", "prompt", "router", "scores", "each", "keeps",
    "top", "outputs", "are", "summed", "with", "weights", "such", "fleet", "problem", "which", "how", "many",
    "replicas", "run", "where", "what", "million", "tokens", "really", "costs", "operator", "reads", "plans",
    "placement", "experts", "across", "devices", "renders", "scales", "every", "pool", "from", "live", "latency",
    "caching", "stores", "keys", "values", "prefix", "so", "that", "repeated", "read", "back", "instead", "quick",
    "brown", "fox", "over", "lazy",
)
_BLOCK_SEED, _PAD_SEED, _PLAIN_SEED = 0x6D6F6F6E, 0x70616464, 0x617A7572


@dataclass(frozen=True)
class PlannedRequest:
    """One trace request as it will be sent: when (s after the start), how many tokens in and out, the text."""

    i: int
    arrival_s: float
    prompt_tokens: int          # wanted prompt length in tokens (= words of ``text``)
    cached_hint: int            # of those, the leading tokens the trace says a prefix cache already holds
    max_tokens: int
    text: str


def _scaled(x: float, scale: float) -> int:
    return max(1, int(round(float(x) * scale)))


def _words(seed: list[int], n: int) -> list[str]:
    idx = np.random.default_rng(seed).integers(0, len(WORDS), n)
    return [WORDS[k] for k in idx]


def _mooncake_hash_ids(path: Path) -> list[list[int]]:
    """Every request's hash_ids in the order ``load_mooncake_jsonl`` returns them (stable sort on timestamp);
    the file was already validated by ``load_trace``."""
    stamps, ids = [], []
    with path.open() as f:
        for text in f:
            if text.strip():
                r = json.loads(text)
                stamps.append(float(r["timestamp"]))
                ids.append([int(b) & 0xFFFFFFFFFFFFFFFF for b in r.get("hash_ids", [])])
    return [ids[k] for k in np.argsort(np.asarray(stamps), kind="stable")]


def plan_requests(path: str | Path, speedup: float = 1.0, scale: float = 1.0, duration_s: float | None = None,
                  max_prompt_tokens: int | None = None) -> tuple[Trace, list[PlannedRequest]]:
    """The trace (UserError when malformed) and the requests arriving before ``duration_s``, with their texts;
    ``max_prompt_tokens`` cuts longer (scaled) prompts to fit a small model's context."""
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise UserError(f"--max-prompt-tokens must be >= 1, got {max_prompt_tokens}")
    if not speedup > 0:
        raise UserError(f"--speedup must be > 0, got {speedup:g}")
    if not scale > 0 or not math.isfinite(scale):
        raise UserError(f"--scale-tokens must be > 0, got {scale:g}")
    if duration_s is not None and not duration_s > 0:
        raise UserError(f"--duration must be > 0 seconds, got {duration_s:g}")
    trace = load_trace(path, speedup)
    n = len(trace) if duration_s is None else int(np.searchsorted(trace.arrival_s, duration_s, side="left"))
    p = Path(path)
    hash_ids = _mooncake_hash_ids(p) if p.suffix in (".jsonl", ".json") else None
    block = max(1, int(round(MOONCAKE_BLOCK_TOKENS * scale)))
    blocks: dict[int, list[str]] = {}
    out = []
    for i in range(n):
        want = _scaled(trace.prompt[i] + trace.cached[i], scale)
        if max_prompt_tokens is not None:
            want = min(want, max_prompt_tokens)
        hint = 0
        if hash_ids is not None:
            words: list[str] = []
            for h in hash_ids[i]:
                if len(words) >= want:
                    break
                if h not in blocks:
                    blocks[h] = _words([_BLOCK_SEED, h], block)
                words.extend(blocks[h])
            if len(words) < want:
                words.extend(_words([_PAD_SEED, i], want - len(words)))
            hint = min(want, int(round(trace.cached[i] / MOONCAKE_BLOCK_TOKENS)) * block)
        else:  # no block ids (Azure): distinct texts from the first word, so no accidental prefix sharing
            words = _words([_PLAIN_SEED, i], want)
        out.append(PlannedRequest(i=i, arrival_s=float(trace.arrival_s[i]), prompt_tokens=want, cached_hint=hint,
                                  max_tokens=_scaled(trace.output[i], scale),
                                  text="".join(" " + w for w in words[:want])))
    return trace, out


def normalize_endpoint(url: str) -> str:
    """``http(s)://host[:port][/path]`` -> the client's base URL (``/v1`` added when no path is given)."""
    parts = urlsplit(url.strip())
    try:
        parts.port
    except ValueError:
        raise UserError(f"--endpoint {url!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--endpoint {url!r} is not an http(s) URL like http://127.0.0.1:8000/v1")
    if parts.query or parts.fragment:
        raise UserError(f"--endpoint {url!r}: give the API base URL without a query or fragment")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _client(base_url: str, timeout_s: float, api_key: str):
    from openai import AsyncOpenAI

    # max_retries=0: a retry would add load the trace does not have and hide the failure being measured
    return AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s, max_retries=0)


def _describe(exc: BaseException) -> str:
    """One line for an openai/network exception (no traceback, the cause named)."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        return f"HTTP {exc.status_code}: {str(inner.get('message') or inner.get('detail') or exc.message)[:300]}"
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"connection failed: {cause or exc}"
    return f"{type(exc).__name__}: {exc}"


async def probe(base_url: str, model: str | None, api_key: str = "EMPTY") -> str:
    """The model to ask for: ``model`` checked against ``/models``, else the endpoint's first model.
    An unreachable or refusing endpoint is a UserError that says so (one line, no traceback)."""
    import openai

    client = _client(base_url, PROBE_TIMEOUT_S, api_key)
    try:
        page = await client.models.list()
        served = [m.id for m in page.data]
    except (openai.APIError, OSError) as exc:
        raise UserError(f"cannot use {base_url}: {_describe(exc)} (is the server running, e.g. `moectl up`?)") from None
    finally:
        await client.close()
    if not served:
        raise UserError(f"{base_url}/models lists no model")
    if model is None:
        return served[0]
    if model not in served:
        raise UserError(f"model {model!r} is not served at {base_url} (it serves {', '.join(served)})")
    return model


def _new_record(p: PlannedRequest) -> dict[str, Any]:
    return {"i": p.i, "arrival_s": round(p.arrival_s, 4), "sent_s": None, "first_token_s": None, "end_s": None,
            "ttft_s": None, "tpot_s": None, "prompt_tokens": p.prompt_tokens, "prompt_tokens_target": p.prompt_tokens,
            "cached_prompt_tokens_hint": p.cached_hint, "cached_prompt_tokens": None, "max_tokens": p.max_tokens,
            "completion_tokens": 0, "finish_reason": None, "outcome": None, "error": None}


async def _send(client, model: str, p: PlannedRequest, rec: dict[str, Any], clock: Callable[[], float],
                timeout_s: float, extra_body: dict | None) -> None:
    """One streaming completion; fills ``rec`` whatever happens (cancellation included, then re-raised)."""
    import openai

    rec["sent_s"] = clock()
    stream, usage, chunks = None, None, 0
    try:
        async with asyncio.timeout(timeout_s):
            stream = await client.completions.create(
                model=model, prompt=p.text, max_tokens=p.max_tokens, stream=True,
                stream_options={"include_usage": True}, extra_body=extra_body)
            async for chunk in stream:
                now = clock()
                for c in chunk.choices or ():
                    if c.text or not c.finish_reason:
                        chunks += 1   # a token chunk: its text may be held back (empty), or end the stream
                    if rec["first_token_s"] is None:
                        rec["first_token_s"] = now   # the first chunk of a completion stream is its first token
                    if c.finish_reason:
                        rec["finish_reason"] = c.finish_reason
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
        rec["outcome"] = "ok"
    except TimeoutError:
        rec["outcome"], rec["error"] = "timeout", f"no complete answer within {timeout_s:g} s"
    except asyncio.CancelledError:
        rec["outcome"], rec["error"] = "cancelled", "stopped by the user"
        raise
    except openai.APITimeoutError:
        rec["outcome"], rec["error"] = "timeout", f"the client's read timeout ({timeout_s:g} s) passed"
    except (openai.APIError, OSError) as exc:
        rec["outcome"], rec["error"] = "error", _describe(exc)
    finally:
        rec["end_s"] = clock()
        if stream is not None:
            try:
                await stream.close()  # the server cancels the sequence of a stream closed early
            except Exception:  # noqa: BLE001 (the connection is already gone: nothing left to free)
                pass
        if usage is not None:
            rec["completion_tokens"] = int(usage.completion_tokens or 0)      # a server may send null: count 0
            rec["prompt_tokens"] = int(usage.prompt_tokens or rec["prompt_tokens"])
            details = getattr(usage, "prompt_tokens_details", None)
            if details is not None and getattr(details, "cached_tokens", None) is not None:
                rec["cached_prompt_tokens"] = int(details.cached_tokens)
        else:
            rec["completion_tokens"] = chunks  # no usage chunk: token chunks (about one per generated token)
        if rec["outcome"] == "ok" and rec["first_token_s"] is None:
            rec["outcome"], rec["error"] = "error", "the stream ended without a completion chunk"
        f = rec["first_token_s"]
        if f is not None:
            rec["ttft_s"] = f - rec["sent_s"]
            if rec["outcome"] == "ok" and rec["completion_tokens"] >= 2:
                rec["tpot_s"] = (rec["end_s"] - f) / (rec["completion_tokens"] - 1)
        for k in ("sent_s", "first_token_s", "end_s", "ttft_s", "tpot_s"):
            if rec[k] is not None:
                rec[k] = round(rec[k], 5)


@dataclass
class ReplayRun:
    """What a replay measured: one record per scheduled request, in trace order."""

    model: str
    records: list[dict[str, Any]]
    interrupted: bool
    wall_s: float
    peak_in_flight: int


async def _until(stop: asyncio.Event, delay_s: float) -> bool:
    """Sleep ``delay_s`` unless ``stop`` is set first; True when stopped."""
    if stop.is_set():
        return True
    if delay_s <= 0:
        return False
    try:
        await asyncio.wait_for(stop.wait(), delay_s)
        return True
    except TimeoutError:
        return False


async def replay(planned: list[PlannedRequest], base_url: str, model: str, *, max_in_flight: int, timeout_s: float,
                 stop: asyncio.Event | None = None, on_event: Callable[[str, int], None] | None = None,
                 extra_body: dict | None = None, api_key: str = "EMPTY") -> ReplayRun:
    """Send ``planned`` at their arrival times; ``on_event(kind, in_flight)`` with kind sent|rejected|done."""
    if max_in_flight < 1:
        raise UserError(f"--max-in-flight must be >= 1, got {max_in_flight}")
    if not timeout_s > 0:
        raise UserError(f"--timeout must be > 0 seconds, got {timeout_s:g}")
    stop = stop or asyncio.Event()
    emit = on_event or (lambda kind, n: None)
    loop = asyncio.get_running_loop()
    client = _client(base_url, timeout_s, api_key)
    records = [_new_record(p) for p in planned]
    active: set[asyncio.Task] = set()
    peak = 0
    t0 = loop.time()

    def clock() -> float:
        return loop.time() - t0

    def finished(task: asyncio.Task) -> None:
        active.discard(task)
        emit("done", len(active))

    try:
        for p, rec in zip(planned, records):
            if await _until(stop, p.arrival_s - clock()):
                break
            if len(active) >= max_in_flight:
                rec["outcome"], rec["error"] = "rejected_client", f"{max_in_flight} requests already in flight"
                emit("rejected", len(active))
                continue
            task = loop.create_task(_send(client, model, p, rec, clock, timeout_s, extra_body))
            active.add(task)
            peak = max(peak, len(active))
            task.add_done_callback(finished)
            emit("sent", len(active))
        waiter = loop.create_task(stop.wait())
        try:
            while active and not stop.is_set():
                await asyncio.wait(active | {waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        interrupted = stop.is_set()
        for task in list(active):
            task.cancel()
        if active:
            await asyncio.gather(*active, return_exceptions=True)
    finally:
        await client.close()
    wall = clock()
    return ReplayRun(model, records if not interrupted else [r for r in records if r["outcome"] is not None],
                     interrupted, round(wall, 3), peak)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 5) if values else None


def summarize(records: list[dict[str, Any]], window_s: float = DEFAULT_WINDOW_S,
              wall_s: float | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-window figures and a summary of replay records (pure).

    A window holds the requests *sent* in it (rejected ones by arrival) for counts and latency percentiles;
    throughput spreads each request's completion tokens evenly over [first token, end] and counts its prompt
    tokens at its first token, so tokens/s is what the endpoint produced in that window.
    """
    if not window_s > 0:
        raise UserError(f"--window must be > 0 seconds, got {window_s:g}")
    ends = [r["end_s"] for r in records if r["end_s"] is not None]
    wall = wall_s if wall_s is not None else (max(ends) if ends else 0.0)
    horizon = max(wall, max((r["arrival_s"] for r in records), default=0.0))
    n_win = max(1, math.ceil(horizon / window_s - 1e-9))
    out_tokens = np.zeros(n_win)
    in_tokens = np.zeros(n_win)
    edges = np.arange(n_win + 1) * window_s
    per: list[dict[str, list]] = [{"ttft": [], "tpot": [], "outcomes": []} for _ in range(n_win)]
    for r in records:
        t = r["sent_s"] if r["sent_s"] is not None else r["arrival_s"]
        w = min(n_win - 1, int(t // window_s))
        per[w]["outcomes"].append(r["outcome"])
        if r["outcome"] == "ok":
            if r["ttft_s"] is not None:
                per[w]["ttft"].append(r["ttft_s"])
            if r["tpot_s"] is not None:
                per[w]["tpot"].append(r["tpot_s"])
        f, e = r["first_token_s"], r["end_s"]
        if f is None or e is None:
            continue
        in_tokens[min(n_win - 1, int(f // window_s))] += r["prompt_tokens"]
        n = r["completion_tokens"]
        if e <= f:
            out_tokens[min(n_win - 1, int(f // window_s))] += n
        else:  # overlap of [f, e] with each window, as a share of n tokens
            overlap = np.clip(np.minimum(edges[1:], e) - np.maximum(edges[:-1], f), 0.0, None)
            out_tokens += n * overlap / (e - f)
    windows = []
    for k in range(n_win):
        oc = per[k]["outcomes"]
        windows.append({
            "start_s": round(k * window_s, 3), "end_s": round((k + 1) * window_s, 3), "requests": len(oc),
            **{o: oc.count(o) for o in OUTCOMES},
            "output_tokens_per_s": round(float(out_tokens[k]) / window_s, 3),
            "prompt_tokens_per_s": round(float(in_tokens[k]) / window_s, 3),
            "ttft_p50_s": _pct(per[k]["ttft"], 50), "ttft_p95_s": _pct(per[k]["ttft"], 95),
            "tpot_p50_s": _pct(per[k]["tpot"], 50), "tpot_p95_s": _pct(per[k]["tpot"], 95),
        })
    ok = [r for r in records if r["outcome"] == "ok"]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    tpot = [r["tpot_s"] for r in ok if r["tpot_s"] is not None]
    lag = [r["sent_s"] - r["arrival_s"] for r in records if r["sent_s"] is not None]
    done_out = sum(r["completion_tokens"] for r in ok)
    asked_out = sum(r["max_tokens"] for r in ok)
    summary = {
        "requests": len(records), **{o: sum(r["outcome"] == o for r in records) for o in OUTCOMES},
        "wall_s": round(wall, 3),
        "prompt_tokens": sum(r["prompt_tokens"] for r in ok),
        "cached_prompt_tokens": sum(r["cached_prompt_tokens"] or 0 for r in ok),
        "cached_prompt_tokens_hint": sum(r["cached_prompt_tokens_hint"] for r in ok),
        "completion_tokens": done_out,
        "completion_tokens_asked": asked_out,
        "output_tokens_per_s": round(done_out / wall, 3) if wall > 0 else None,
        "ttft_p50_s": _pct(ttft, 50), "ttft_p95_s": _pct(ttft, 95), "ttft_p99_s": _pct(ttft, 99),
        "tpot_p50_s": _pct(tpot, 50), "tpot_p95_s": _pct(tpot, 95),
        "send_lag_p95_s": _pct(lag, 95),
    }
    return windows, summary


def build_doc(run: ReplayRun, *, trace_file: str, trace: Trace, planned: list[PlannedRequest], base_url: str,
              speedup: float, scale: float, duration_s: float | None, max_in_flight: int, timeout_s: float,
              max_prompt_tokens: int | None = None,
              window_s: float, replicas: int, ignore_eos: bool) -> dict[str, Any]:
    """The replay's JSON document (shape: docs/simulate.md, "moectl replay")."""
    windows, summary = summarize(run.records, window_s, run.wall_s)
    summary["peak_in_flight"] = run.peak_in_flight
    return {
        "version": JSON_VERSION,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "trace": {"file": trace_file, "requests": len(trace), "scheduled": len(planned),
                  "duration_s": duration_s, "speedup": speedup, "scale_tokens": scale,
                  "max_prompt_tokens": max_prompt_tokens},
        "endpoint": {"url": base_url, "model": run.model, "replicas": replicas},
        "settings": {"max_in_flight": max_in_flight, "timeout_s": timeout_s, "window_s": window_s,
                     "ignore_eos": ignore_eos},
        "interrupted": run.interrupted,
        "summary": summary,
        "windows": windows,
        "requests": run.records,
    }


def plot_replay(doc: dict[str, Any], out: str | Path) -> Path:
    """Two panels over time: tokens/s per window (output, prompt); TTFT p50/p95 and TPOT p50 per window."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = doc["windows"]
    mid = np.array([(x["start_s"] + x["end_s"]) / 2 for x in w])

    def col(key):
        return np.array([np.nan if x[key] is None else x[key] for x in w], dtype=float)

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    ax1.plot(mid, col("output_tokens_per_s"), "o-", label="output tokens/s")
    ax1.set_ylabel("output tokens/s")
    ax1b = ax1.twinx()   # prompt tokens/s is often 10-100x the output rate: its own axis
    ax1b.plot(mid, col("prompt_tokens_per_s"), "s--", color="C1", label="prompt tokens/s")
    ax1b.set_ylabel("prompt tokens/s")
    s = doc["summary"]
    ax1.set_title(
        f"{Path(doc['trace']['file']).name} x{doc['trace']['speedup']:g}, tokens x{doc['trace']['scale_tokens']:g} "
        f"-> {doc['endpoint']['model']}: {s['ok']} ok, {s['error']} error, {s['timeout']} timeout, "
        f"{s['rejected_client']} rejected",
        fontsize=9,
    )
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=8)
    ax2.plot(mid, col("ttft_p50_s"), "o-", label="TTFT p50")
    ax2.plot(mid, col("ttft_p95_s"), "o--", label="TTFT p95")
    ax2.set_ylabel("TTFT s")
    ax3 = ax2.twinx()
    ax3.plot(mid, col("tpot_p50_s"), "^-", color="C2", label="TPOT p50")
    ax3.set_ylabel("TPOT s")
    lines = ax2.get_legend_handles_labels()
    more = ax3.get_legend_handles_labels()
    ax2.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8)
    ax2.set_xlabel(f"seconds (windows of {doc['settings']['window_s']:g} s)")
    from moe_operator.autoscaling.simulate.plots import save_figure

    return save_figure(fig, out)
