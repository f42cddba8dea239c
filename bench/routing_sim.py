"""Routing policies on the Mooncake trace (issue 12): least-loaded vs prefix-aware vs random on a fixed fleet.

Usage: .venv/bin/python bench/routing_sim.py [--spec bench/autoscale_two_pool.yaml] [--fleet h800=4,ascend=4]
                                             [--speedup 1] [--cache-blocks N] [--trace FILE] [--no-autoscaled]

Replays the trace through ``moectl simulate``'s replica model (``simulate.run.replay``, the code the CLI runs)
with a FIXED fleet (no autoscaler: the policy always asks for ``--fleet``), once per router, each replica with its
own prefix cache of the size ``moectl simulate`` derives from the spec (``simulate/prefix_cache.py``; or
``--cache-blocks`` per replica). Prints one markdown table: router, prefix-cache hit ratio, TTFT p50/p95, TPOT
p50, SLO attainment, $/1M tokens, $/1M at full use, the share of tokens the cheaper pool (lowest $/work unit)
served, the fleet's utilisation (work served / ready capacity while the trace arrives) and the requests every
replica was full for (the live router would answer 429; the simulator queues them on the least-loaded replica).
Above it: the trace's hit ratio with one unlimited cache for the whole fleet (the ceiling).

A fixed fleet costs the same whatever the router, so its $/1M differs only by the drain after the last arrival.
"$/1M at full use" prices the work each pool served at that pool's $/work unit at full use
(``routing.dollars_per_work``, the router's own price): what the tokens would cost on replicas kept busy, where
cache hits and pool choice show. A second table (skip it with ``--no-autoscaled``) replays the same trace with
our autoscaler (policy ``ours``, the spec's pools and limits) per router, where $/1M follows the work.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "runtime")]
TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation.jsonl"   # ../shared/traces beside the checkout


class Fixed:
    """A static policy: the same replicas per pool at every decision."""

    name = "fixed"

    def __init__(self, mix: dict[str, int]):
        self.mix = dict(mix)

    def __call__(self, obs, replay, now):
        return dict(self.mix)


def parse_fleet(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        name, _, n = part.partition("=")
        out[name.strip()] = int(n)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "bench" / "autoscale_two_pool.yaml"))
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--fleet", default="h800=4,ascend=4", help="replicas per pool, e.g. h800=4,ascend=4")
    ap.add_argument("--speedup", type=float, default=1.0)
    ap.add_argument("--cache-blocks", type=int, default=None, help="prefix-cache blocks per replica (default: spec)")
    ap.add_argument("--no-autoscaled", action="store_true", help="skip the table with our autoscaler")
    args = ap.parse_args(argv)

    from moe_operator.api import load_manifest
    from moe_operator.autoscaling.from_spec import pool_models_from_spec, settings_from_spec
    from moe_operator.autoscaling.simulate.prefix_cache import cache_blocks_from_spec
    from moe_operator.autoscaling.simulate.replicas import profiles_for
    from moe_operator.autoscaling.simulate.run import make_policy, replay
    from moe_operator.autoscaling.simulate.traces import load_trace
    from moe_operator.catalog import Catalog
    from moe_runtime import routing

    dep = load_manifest(args.spec)
    spec = dep.spec
    pools, weights = pool_models_from_spec(dep)
    settings = settings_from_spec(spec.autoscaling, weights)
    fleet = parse_fleet(args.fleet)
    unknown = set(fleet) - {p.name for p in pools}
    if unknown:
        ap.error(f"--fleet names unknown pool(s) {sorted(unknown)}")
    trace = load_trace(args.trace, args.speedup)
    profiles = profiles_for(pools, spec.serving.max_batch_size, weights=weights,
                            max_context_tokens=spec.model.max_context_tokens)
    blocks = (args.cache_blocks if args.cache_blocks is not None
              else cache_blocks_from_spec(spec, Catalog.default(), trace.block_tokens))
    dpw = {p.name: routing.dollars_per_work(p.price_per_hour, p.capacity) for p in pools}
    cheap = min((p for p in pools if fleet.get(p.name)), key=lambda p: dpw[p.name]).name
    capacity = sum(p.capacity * fleet.get(p.name, 0) for p in pools)

    print(f"spec {Path(args.spec).relative_to(ROOT) if Path(args.spec).is_relative_to(ROOT) else args.spec} "
          f"({spec.engine}): " + ", ".join(
              f"{p.name} x{fleet.get(p.name, 0)} ${p.price_per_hour:.2f}/h {p.capacity:g} work/s "
              f"(${dpw[p.name] * 3.6e9:.3f}/1M work units)" for p in pools)
          + f"; maxBatchSize {spec.serving.max_batch_size}, maxQueue {spec.serving.max_queue}; "
            f"SLO TTFT <= {settings.ttft_p95_s:g} s, TPOT <= {settings.tpot_p95_s:g} s")
    offered = [float(_work(trace, weights, cache).sum()) / trace.duration_s for cache in (True, False)]
    print(f"trace {trace.name} x{args.speedup:g}: {len(trace)} requests, {trace.duration_s / 60:.1f} min, "
          f"{trace.block_tokens}-token blocks; offered work {offered[0]:.0f} work units/s with the unlimited cache's "
          f"hits, {offered[1]:.0f} with none; fleet capacity {capacity:g}")
    src = "--cache-blocks" if args.cache_blocks is not None else "the spec (simulate/prefix_cache.py)"
    shown = blocks if isinstance(blocks, dict) or blocks is None else {p.name: blocks for p in pools}
    print(f"prefix cache per replica ({src}): "
          + (", ".join(f"{k} {v} blocks ({v * trace.block_tokens / 1e3:.0f}k tokens)" for k, v in shown.items())
             if shown else "the profile's KV tokens"))
    print(f"ceiling: one unlimited cache for the whole fleet hits {trace.cache_hit_ratio:.1%} of prompt tokens")
    print()
    print(f"### Fixed fleet {args.fleet} ({sum(fleet.values())} replicas), no autoscaler\n")
    table(trace, pools, settings, profiles, blocks, spec, weights, dpw, cheap, lambda: Fixed(fleet), replay)
    if not args.no_autoscaled:
        print("\n### Our autoscaler (policy ours; the spec's pools: " + ", ".join(
            f"{p.name} {p.min_replicas}-{p.max_replicas}" for p in pools) + ")\n")
        table(trace, pools, settings, profiles, blocks, spec, weights, dpw, cheap,
              lambda: make_policy("ours", trace, pools, settings, spec.serving.max_batch_size), replay, mean=True)
    return 0


def table(trace, pools, settings, profiles, blocks, spec, weights, dpw, cheap, policy, replay, mean=False) -> None:
    """One row per router (module docstring)."""
    from moe_operator.autoscaling.simulate.replicas import ROUTERS

    print("| router | hit ratio | TTFT p50 s | TTFT p95 s | TPOT p50 s | SLO attainment | $/1M tokens | "
          f"$/1M at full use | {cheap} token share | utilisation | full (429) |"
          + (" mean replicas |" if mean else " CPU s |"))
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in ROUTERS:
        t0 = time.process_time()
        r = replay(trace, pools, settings, policy(), cold_start=mean, profiles=profiles, router=name,
                   cache_blocks=blocks, max_queue=spec.serving.max_queue)
        cpu = time.process_time() - t0
        during = [s for s in r.series if s[0] < trace.duration_s]
        util = sum(s[5] for s in during) / max(1e-9, sum(s[2] for s in during))
        tok = r.tokens_by_pool
        tokens = sum(sum(t.values()) for t in tok.values())
        full_use = sum(dpw[p] * (weights.prompt * t["prompt"] + weights.cached_prompt * t["cached_prompt"]
                                 + weights.generated * t["generated"]) for p, t in tok.items())
        last = (" " + " ".join(f"{k}={v:.1f}" for k, v in r.mean_replicas.items()) + " |") if mean else f" {cpu:.1f} |"
        print(f"| {name} | {r.cache_hit_ratio:.1%} | {r.ttft_p50_s:.2f} | {r.ttft_p95_s:.2f} | {r.tpot_p50_s:.3f} | "
              f"{r.slo_attainment:.1%} | {r.cost_per_million:.4f} | {full_use * 1e6 / tokens:.4f} | "
              f"{sum(tok[cheap].values()) / tokens:.1%} | {util:.0%} | {r.router_full} |" + last)


def _work(trace, w, cache: bool = True):
    if cache:
        return w.prompt * trace.prompt + w.cached_prompt * trace.cached + w.generated * trace.output
    return w.prompt * (trace.prompt + trace.cached) + w.generated * trace.output


if __name__ == "__main__":
    sys.exit(main())
