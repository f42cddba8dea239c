"""Autoscaler benchmark: our policy vs the offline optimum and every baseline on two real traces.

Usage: .venv/bin/python bench/autoscale_bench.py [--spec bench/autoscale_two_pool.yaml] [--img docs/img]

For each case (trace, speedup, TTFT target) it replays the trace through the simulator's queueing model
for all policies, prints a markdown table (cost $, $/1M tokens, SLO attainment, scale actions, unmet
tokens, cost / optimum) and the checks of issue 5 (ours within 15% of the optimum at >= 99% SLO; cheaper
than every baseline with equal or better SLO), and writes one PNG per case.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"  # ../shared/traces beside the checkout
# (trace file, speedup, TTFT p95 target s): code completion needs a fast first token; Mooncake's
# long-context conversations (p99 prompt 72k computed tokens, > 6 s of prefill alone) cannot meet 2 s.
CASES = (("azure_llm_code_2023.csv", 1.0, 2.0), ("mooncake_conversation.jsonl", 1.0, 10.0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "bench" / "autoscale_two_pool.yaml"))
    ap.add_argument("--img", default=str(ROOT / "docs" / "img"))
    ap.add_argument("--traces", default=str(TRACES))
    args = ap.parse_args(argv)

    from moe_operator.api import load_manifest
    from moe_operator.autoscaling.from_spec import pool_models_from_spec, settings_from_spec
    from moe_operator.autoscaling.simulate.plots import plot_results
    from moe_operator.autoscaling.simulate.run import POLICIES, simulate
    from moe_operator.autoscaling.simulate.traces import load_trace

    dep = load_manifest(args.spec)
    pools, weights = pool_models_from_spec(dep)
    base = settings_from_spec(dep.spec.autoscaling, weights)
    print(f"spec {args.spec}: " + ", ".join(f"{p.name} ${p.price_per_hour:.2f}/h {p.capacity:g} work/s max {p.max_replicas}"
                                             for p in pools)
          + f"; weights prompt {weights.prompt:.4f} cached {weights.cached_prompt:.4f}; targetUtilization {base.target_utilization}")
    ok_all = True
    for name, speedup, ttft in CASES:
        settings = dataclasses.replace(base, ttft_p95_s=ttft)
        trace = load_trace(Path(args.traces) / name, speedup)
        t0 = time.time()
        out = simulate(trace, pools, settings, POLICIES, dep.spec.serving.max_batch_size)
        res, opt = out["results"], out["optimum"]
        print(f"\n### {name} x{speedup:g}, TTFT <= {ttft:g} s, TPOT <= {settings.tpot_p95_s:g} s "
              f"({len(trace)} requests, {trace.duration_s / 60:.0f} min, cache hit {trace.cache_hit_ratio:.1%}; "
              f"{time.time() - t0:.0f} s to simulate)\n")
        print("| policy | cost $ | $/1M tokens | SLO attainment | scale actions | unmet tokens | cost / optimum |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for pname, r in res.items():
            print(f"| {pname} | {r.total_cost:.2f} | {r.cost_per_million:.4f} | {r.slo_attainment:.2%} | {r.scale_actions} | "
                  f"{r.unmet_tokens:.0f} | {r.total_cost / opt.cost:.3f} |")
        print(f"\noffline optimum (MILP, HiGHS): ${opt.cost:.2f}; LP lower bound (mean demand, fractional): ${opt.lp_bound:.2f}")
        ours = res["ours"]
        within = ours.total_cost <= 1.15 * opt.cost and ours.slo_attainment >= 0.99
        beaten = [p for p, r in res.items() if p not in ("ours", "optimum")
                  and r.slo_attainment >= ours.slo_attainment and r.total_cost <= ours.total_cost]
        print(f"check: ours within 15% of optimum at >= 99% SLO: {'PASS' if within else 'FAIL'} "
              f"(ratio {ours.total_cost / opt.cost:.3f}, SLO {ours.slo_attainment:.2%})")
        print(f"check: no baseline as cheap with equal or better SLO: {'PASS' if not beaten else 'FAIL ' + ', '.join(beaten)}")
        ok_all &= within and not beaten
        png = Path(args.img) / f"autoscaling-{Path(name).stem}.png"
        plot_results(res, [p.name for p in pools], png, f"{name} x{speedup:g} (TTFT <= {ttft:g} s) on {dep.metadata.name}")
        print(f"plot: {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
