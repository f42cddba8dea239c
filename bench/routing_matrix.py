"""Routing across a matrix of traffic shapes (issue 12): does the cost- and prefix-aware router ever lose to
least-loaded on traffic it was not tuned on?

Usage: .venv/bin/python bench/routing_matrix.py [--jobs 2] [--json OUT] [--traces-dir DIR] [--quick]

Cases: the two real traces (../shared/traces beside the checkout) at speedups 0.5, 1, 2 and 4, plus the synthetic
shapes of simulate/synthetic.py sized to each spec (as bench/autoscale_matrix.py sizes them), on each spec whose
fleet has more than one replica to route to (bench/autoscale_two_pool.yaml, examples/qwen3-moe-mixed.yaml,
examples/deepseek-v3-h800.yaml, examples/mixtral-8x7b-ascend.yaml, as shipped). Each case replays the trace
through ``simulate.run.replay`` (the replica model ``moectl simulate`` runs) once per router and fleet mode:

* ``fixed``: every pool at maxReplicas, no autoscaler: the router alone decides; $/1M at full use prices the work
  each pool served at that pool's $/work unit (``routing.dollars_per_work``), where cache hits and pool choice
  show (the fleet's bill is the same whatever the router);
* ``ours``: our autoscaler (the spec's pools, limits and budget; cold starts paid): $/1M is the bill.

One table row per case and mode, then the counts the issue asks about: cases where prefix-aware meets the SLO for
fewer requests than least-loaded (by more than 0.5 points) and where it costs more (by more than 2%). Synthetic
traces carry no block hashes, so there the router's prefix side is idle and only its cost and SLO guards act.
Progress goes to stderr. Exit 0 whatever the counts say (a benchmark, not a test).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "runtime"), str(ROOT / "bench")]
TRACES = ROOT.parent / "shared" / "traces"
SPECS = ("bench/autoscale_two_pool.yaml", "examples/qwen3-moe-mixed.yaml", "examples/deepseek-v3-h800.yaml",
         "examples/mixtral-8x7b-ascend.yaml")
REAL = ("mooncake_conversation.jsonl", "azure_llm_code_2023.csv")
SPEEDUPS = (0.5, 1.0, 2.0, 4.0)
ROUTERS = ("least-loaded", "prefix-aware")
MODES = ("fixed", "ours")
SLO_MARGIN = 0.005     # prefix-aware loses on SLO when it meets it for this much fewer requests
COST_MARGIN = 1.02     # ... or on cost when it costs more than this times least-loaded's


def run_case(case: dict) -> dict:
    from autoscale_matrix import _load, _trace
    from routing_sim import Fixed

    from moe_operator.autoscaling.simulate.prefix_cache import cache_blocks_from_spec
    from moe_operator.autoscaling.simulate.replicas import profiles_for
    from moe_operator.autoscaling.simulate.run import make_policy, replay
    from moe_operator.catalog import Catalog
    from moe_runtime import routing

    dep, pools, weights, shipped, settings = _load(str(ROOT / case["spec"]), True)
    trace = _trace(case, pools, weights, shipped, dep, case["traces_dir"])
    spec = dep.spec
    profiles = profiles_for(pools, spec.serving.max_batch_size, weights=weights,
                            max_context_tokens=spec.model.max_context_tokens)
    blocks = cache_blocks_from_spec(spec, Catalog.default(), trace.block_tokens)
    dpw = {p.name: routing.dollars_per_work(p.price_per_hour, p.capacity) for p in pools}
    widest = {p.name: p.max_replicas for p in pools}
    row = dict(case, requests=len(trace), results={})
    for mode in MODES:
        for name in ROUTERS:
            policy = Fixed(widest) if mode == "fixed" else make_policy("ours", trace, pools, settings,
                                                                         spec.serving.max_batch_size)
            r = replay(trace, pools, settings, policy, cold_start=mode == "ours", profiles=profiles, router=name,
                       cache_blocks=blocks, max_queue=spec.serving.max_queue)
            tok = r.tokens_by_pool
            tokens = sum(sum(t.values()) for t in tok.values()) or 1.0
            full_use = sum(dpw[p] * (weights.prompt * t["prompt"] + weights.cached_prompt * t["cached_prompt"]
                                     + weights.generated * t["generated"]) for p, t in tok.items())
            row["results"][f"{mode}/{name}"] = {
                "slo": r.slo_attainment, "hit": r.cache_hit_ratio,
                "cost": full_use * 1e6 / tokens if mode == "fixed" else r.cost_per_million,
                "ttftP95": r.ttft_p95_s, "full": r.router_full}
    return row


def _worker(case):
    t0 = time.perf_counter()
    try:
        row = run_case(case)
    except Exception as exc:   # one broken case must not lose the others
        row = dict(case, error=f"{type(exc).__name__}: {exc}")
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def cases(quick: bool, traces_dir: str) -> list[dict]:
    from moe_operator.autoscaling.simulate.synthetic import SHAPES

    out = []
    for spec in SPECS[:2] if quick else SPECS:
        for trace in REAL:
            for s in (1.0,) if quick else SPEEDUPS:
                out.append({"spec": spec, "kind": "real", "trace": trace, "speedup": s, "traces_dir": traces_dir})
        for shape in SHAPES[:4] if quick else SHAPES:
            out.append({"spec": spec, "kind": "synthetic", "trace": shape, "speedup": 1.0, "traces_dir": traces_dir})
    return out


def label(row: dict) -> str:
    name = Path(row["trace"]).stem.split("_")[0] if row["kind"] == "real" else row["trace"]
    return f"{Path(row['spec']).stem} {name}" + (f" x{row['speedup']:g}" if row["kind"] == "real" else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--traces-dir", default=str(TRACES))
    ap.add_argument("--quick", action="store_true", help="speedup 1, four shapes, two specs")
    args = ap.parse_args(argv)
    todo = cases(args.quick, args.traces_dir)
    rows, t0 = [], time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(max(1, args.jobs)) as pool:
        for k, row in enumerate(pool.imap(_worker, todo), 1):
            rows.append(row)
            print(f"[{k}/{len(todo)}] {label(row)} {row['seconds']} s ({time.perf_counter() - t0:.0f} s in all)"
                  + (f" ERROR {row['error']}" if "error" in row else ""), file=sys.stderr, flush=True)
    print("| case | mode | least-loaded SLO | prefix-aware SLO | least-loaded $/1M | prefix-aware $/1M | "
          "hit ratio ll / pa |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    lose_slo, lose_cost, n = {m: [] for m in MODES}, {m: [] for m in MODES}, 0
    for row in rows:
        if "error" in row:
            print(f"| {label(row)} | error | {row['error']} | | | | |")
            continue
        n += 1
        for mode in MODES:
            a, b = row["results"][f"{mode}/least-loaded"], row["results"][f"{mode}/prefix-aware"]
            worse_slo = b["slo"] < a["slo"] - SLO_MARGIN
            worse_cost = b["cost"] > a["cost"] * COST_MARGIN
            if worse_slo:
                lose_slo[mode].append(label(row))
            if worse_cost:
                lose_cost[mode].append(label(row))
            print(f"| {label(row)} | {mode} | {a['slo']:.1%} | {'**' if worse_slo else ''}{b['slo']:.1%}"
                  f"{'**' if worse_slo else ''} | {a['cost']:.4f} | {'**' if worse_cost else ''}{b['cost']:.4f}"
                  f"{'**' if worse_cost else ''} | {a['hit']:.1%} / {b['hit']:.1%} |")
    print()
    for mode in MODES:
        print(f"- {mode}: prefix-aware meets the SLO for fewer requests (by > {SLO_MARGIN:.1%}) in "
              f"{len(lose_slo[mode])} of {n} cases" + (f": {', '.join(lose_slo[mode])}" if lose_slo[mode] else ""))
        print(f"- {mode}: prefix-aware costs more (by > {COST_MARGIN - 1:.0%}) in {len(lose_cost[mode])} of {n} "
              f"cases" + (f": {', '.join(lose_cost[mode])}" if lose_cost[mode] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
