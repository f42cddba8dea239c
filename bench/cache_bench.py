"""Context-cache benchmark: replay Mooncake conversation traffic through the real tiny engine, cache on vs off.

The trace's ``hash_ids`` name 512-token blocks shared between requests (a later turn of a conversation repeats
the earlier turns). Each block becomes ``--block-tokens`` deterministic token ids (the same hash -> the same
tokens), which keeps the sharing structure at the tiny model's scale; the prefix cache's block size is the same.
From the first ``--rows`` rows of the trace, whole conversations with at least two turns there (in order of first
appearance, until ``--requests`` requests) are replayed in trace order; single-turn requests share only the system
block and are left out. Each request runs alone, on the cache-on engine and then on the cache-off engine, so both
see the same machine load.

Prints the prompt-token hit ratio and the median TTFT of the requests that hit, with and without the cache.
Usage: python bench/cache_bench.py [--requests 60] [--block-tokens 64] [--max-blocks 16] [--verbose]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation.jsonl"


def load_requests(path: Path, rows: int, requests: int, max_blocks: int) -> list[list[int]]:
    """hash_id lists (truncated to ``max_blocks``) of the first multi-turn conversations among the first ``rows``
    rows: whole conversations (all their turns there) in order of first appearance, replayed in trace order."""
    with open(path) as f:
        trace = [json.loads(line) for _, line in zip(range(rows), f)]
    convs: dict[int, list[int]] = collections.defaultdict(list)  # keyed by the first block after the system one
    for i, r in enumerate(trace):
        if len(r["hash_ids"]) > 1:
            convs[r["hash_ids"][1]].append(i)
    chosen: list[int] = []
    for turns in convs.values():  # dicts keep insertion order: first appearance
        if len(turns) >= 2 and len(chosen) < requests:
            chosen += turns
    return [trace[i]["hash_ids"][:max_blocks] for i in sorted(chosen)]


def block_tokens(hash_id: int, n: int, vocab: range) -> list[int]:
    rng = random.Random(hash_id)
    return [rng.choice(vocab) for _ in range(n)]


async def ttft(engine, prompt: list[int], rid: str) -> tuple[float, int, int | None]:
    """(seconds to the first event, prompt tokens read from the cache, first token id)."""
    from moe_runtime.engine.api import SamplingParams

    t0 = time.perf_counter()
    stream = await engine.generate(prompt, SamplingParams(max_tokens=1, temperature=0.0), rid)
    first_t, first_tok, hit = None, None, 0
    async for ev in stream:
        if first_t is None:
            first_t, first_tok = time.perf_counter() - t0, ev.token_id
        if ev.finished:
            hit = ev.usage.prompt_cache_hit_tokens if ev.usage else 0
    return first_t, hit, first_tok


async def run(args) -> dict:
    from moe_runtime.config import RuntimeConfig
    from moe_runtime.engine import build_engine

    base = dict(model_name="tiny-moe", model_source="builtin://tiny-moe", device="cpu", max_batch_size=1,
                max_queue=4, max_context_tokens=args.block_tokens * args.max_blocks + 64)
    on = build_engine(RuntimeConfig(**base, cache={"prefix": True, "block_tokens": args.block_tokens,
                                                   "memory_bytes": 512 << 20}))
    off = build_engine(RuntimeConfig(**base, cache={"prefix": False, "block_tokens": args.block_tokens}))
    await on.start()
    await off.start()
    try:
        vocab = range(3, on.tokenizer.get_vocab_size())  # skip the special tokens
        reqs = load_requests(Path(args.trace), args.rows, args.requests, args.max_blocks)
        prompts = [[t for h in hashes for t in block_tokens(h, args.block_tokens, vocab)] for hashes in reqs]
        warm = block_tokens(-1, args.block_tokens * 4, vocab)
        for eng in (on, off):  # first-call costs (allocations, kernels) out of the measurement
            await ttft(eng, warm, "warm")
        rows = []
        for i, p in enumerate(prompts):
            t_on, hit, tok_on = await ttft(on, p, f"on-{i}")
            t_off, _, tok_off = await ttft(off, p, f"off-{i}")
            rows.append({"prompt_tokens": len(p), "hit_tokens": hit, "ttft_on_s": t_on, "ttft_off_s": t_off,
                         "same_first_token": tok_on == tok_off})
    finally:
        await on.stop()
        await off.stop()
    if getattr(args, "verbose", False):
        for r in rows:
            print(r)
    hits = [r for r in rows if r["hit_tokens"] > 0]
    med_on = statistics.median(r["ttft_on_s"] for r in hits) if hits else float("nan")
    med_off = statistics.median(r["ttft_off_s"] for r in hits) if hits else float("nan")
    return {
        "requests": len(rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "hit_tokens": sum(r["hit_tokens"] for r in rows),
        "hit_ratio": sum(r["hit_tokens"] for r in rows) / max(1, sum(r["prompt_tokens"] for r in rows)),
        "requests_with_hits": len(hits),
        "hit_ratio_of_hit_requests": sum(r["hit_tokens"] for r in hits) / max(1, sum(r["prompt_tokens"] for r in hits)),
        "ttft_median_with_cache_s": med_on,
        "ttft_median_without_cache_s": med_off,
        "ttft_ratio_off_over_on": med_off / med_on if hits else float("nan"),
        "ttft_median_no_hit_requests_s": statistics.median(
            [r["ttft_on_s"] for r in rows if not r["hit_tokens"]] or [0]
        ),
        "same_first_token": sum(r["same_first_token"] for r in rows),
        # later turns: at least half the prompt read from the cache
        "later_turns": len(later := [r for r in rows if r["hit_tokens"] * 2 >= r["prompt_tokens"]]),
        "ttft_ratio_later_turns": (
            statistics.median(r["ttft_off_s"] for r in later) / statistics.median(r["ttft_on_s"] for r in later)
        )
        if later
        else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", default=str(TRACE), help="Mooncake conversation trace (JSON lines)")
    p.add_argument("--rows", type=int, default=2000, help="leading rows of the trace to draw from")
    p.add_argument("--requests", type=int, default=60, help="requests replayed")
    p.add_argument("--block-tokens", type=int, default=64, help="tokens per trace block (and per cache block)")
    p.add_argument("--max-blocks", type=int, default=16, help="blocks kept per request (prefix truncation)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--verbose", action="store_true", help="print every request's figures")
    args = p.parse_args(argv)
    if not Path(args.trace).is_file():
        print(f"error: trace {args.trace} not found", file=sys.stderr)
        return 2
    out = asyncio.run(run(args))
    print(f"cache bench: {out['requests']} requests from the first {args.rows} rows of {Path(args.trace).name}, "
          f"{args.block_tokens} tokens per 512-token trace block, <= {args.max_blocks} blocks")
    print(f"  prompt-token hit ratio: {out['hit_ratio']:.3f} ({out['hit_tokens']}/{out['prompt_tokens']}); "
          f"requests with hits: {out['requests_with_hits']}/{out['requests']} "
          f"(hit ratio among them {out['hit_ratio_of_hit_requests']:.3f})")
    print(f"  TTFT median of requests with hits: cache on {out['ttft_median_with_cache_s'] * 1e3:.1f} ms, "
          f"cache off {out['ttft_median_without_cache_s'] * 1e3:.1f} ms -> "
          f"{out['ttft_ratio_off_over_on']:.2f}x lower with the cache (target >= 3x)")
    print(f"  later turns (>= half the prompt cached): {out['later_turns']}, TTFT median "
          f"{out['ttft_ratio_later_turns']:.2f}x lower with the cache")
    print(f"  greedy first token identical with and without cache: {out['same_first_token']}/{out['requests']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
