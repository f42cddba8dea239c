"""`moectl simulate`: replay a request trace against autoscaling policies before applying one.

Output per policy: total cost ($), $/1M tokens, SLO attainment, scale actions, unmet demand (tokens), prefix-cache
hit ratio and TTFT p95.
``--json`` prints one object whose shape docs/simulate.md fixes.
"""
from __future__ import annotations

import argparse
import json
import sys

from moe_operator.errors import UserError

JSON_VERSION = 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay a trace through the autoscaler and baselines",
        description="Replay a request trace (Azure CSV or Mooncake JSONL) through a queueing model "
        "of the spec's pools for our policy, baselines and the offline optimum.",
    )
    p.add_argument("--trace", required=True, metavar="FILE", help="Azure LLM trace .csv or Mooncake .jsonl")
    p.add_argument("--spec", "-f", required=True, metavar="FILE", help="MoEDeployment YAML")
    p.add_argument(
        "--policy",
        default="all",
        metavar="NAME",
        help="ours | static-peak | hpa | ray-serve | cheapest-pool | wva-greedy | optimum | all (default), "
        "comma-separated",
    )
    p.add_argument(
        "--speedup", type=float, default=1.0, metavar="N", help="replay N times faster than recorded (default 1)"
    )
    p.add_argument("--cache-hit-ratio", type=float, default=0.0, metavar="R",
                   help="prompt cache-hit ratio for traces without block ids (Azure), 0..1")
    p.add_argument("--json", action="store_true", help="print results as JSON (stable, documented)")
    p.add_argument("--plot", metavar="PNG", help="write demand vs capacity and replicas per pool to this PNG")
    p.add_argument("--catalog", metavar="FILE", help="catalog overrides (ConfigMap YAML)")
    p.add_argument("--model", default="replica", choices=("replica", "fluid"),
                   help="serving model: replica (per-replica engines: batch slots, KV, chunked prefill; default) or "
                        "fluid (the whole fleet as one FIFO queue)")
    p.add_argument("--router", default=None, choices=("least-loaded", "prefix-aware", "random"),
                   help="how the replica model routes requests to replicas: least-loaded (default), prefix-aware "
                        "(the live torch ingress's own rank: prefix cache, $/token, SLO headroom; ~20x slower on "
                        "a busy multi-pool hour) or random")
    p.add_argument("--prefix-cache", default="replica", choices=("replica", "fleet"),
                   help="replica model with a trace that records prompt blocks (Mooncake): each replica's own LRU "
                        "cache, sized from the spec (default), or the trace's hits for one unlimited fleet-wide "
                        "cache (as before issue 12)")
    p.add_argument(
        "--calibrate",
        action="append",
        metavar="[POOL=]FILE",
        help="fit each pool's replica profile from a `moectl replay --out-json` file (POOL=FILE for one pool; "
        "repeatable)",
    )
    p.set_defaults(func=run)


def _policies(text: str) -> list[str]:
    from moe_operator.autoscaling.simulate.run import POLICIES

    names = list(POLICIES) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in POLICIES]
    if bad or not names:
        raise UserError(f"unknown --policy {', '.join(bad) or text!r}; use {', '.join(POLICIES)} or all")
    return names


def _calibrate(values: list[str], deployment, pool_names: list[str]) -> tuple[dict, dict]:
    """``--calibrate [POOL=]FILE`` -> ({pool: ServingProfile}, {pool: JSON report}); a bare FILE applies to every
    pool, POOL=FILE overrides it for one (calibrate.py fits, docs/simulate.md "moectl simulate --calibrate")."""
    from pathlib import Path

    from moe_operator.autoscaling.simulate.calibrate import fit_profile

    files: dict[str, str] = {}
    every = None
    for v in values:
        name, eq, path = v.partition("=")
        if eq and name in pool_names:
            files[name] = path
        elif eq and not Path(v).exists():
            raise UserError(f"--calibrate {v}: no pool {name!r} in the spec (pools: {', '.join(pool_names)})")
        else:
            every = v
    max_batch = deployment.spec.serving.max_batch_size
    kv_tokens = max_batch * deployment.spec.model.max_context_tokens  # every slot can hold a full context
    profiles, reports, fits = {}, {}, {}
    for pool in pool_names:
        path = files.get(pool, every)
        if path is None:
            continue
        if path not in fits:
            try:
                doc = json.loads(Path(path).read_text())
            except OSError as exc:
                raise UserError(f"--calibrate: cannot read {path}: {exc.strerror}") from None
            except ValueError as exc:
                raise UserError(f"--calibrate: {path} is not JSON ({exc})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("requests"), list):
                raise UserError(f"--calibrate: {path} is not a `moectl replay --out-json` file (no requests list)")
            replicas = int((doc.get("endpoint") or {}).get("replicas") or 1)
            try:
                fits[path] = fit_profile(doc["requests"], max_batch, kv_tokens, replicas)
            except UserError as exc:
                raise UserError(f"--calibrate {path}: {exc}") from None
        profile, report = fits[path]
        profiles[pool] = profile
        reports[pool] = {"file": path, "profile": {k: getattr(profile, k) for k in (
            "max_batch", "kv_tokens", "prefill_tps", "cached_prefill_tps", "step_base_s", "step_per_seq_s",
            "ttft_overhead_s")},
            "fit": report}
    return profiles, reports


def run(args: argparse.Namespace) -> int:
    from moe_operator.api import load_manifest
    from moe_operator.autoscaling.from_spec import pool_models_from_spec, settings_from_spec
    from moe_operator.autoscaling.simulate.run import simulate
    from moe_operator.autoscaling.simulate.traces import load_trace

    policies = _policies(args.policy)
    if not 0.0 <= args.cache_hit_ratio < 1.0:
        raise UserError(f"--cache-hit-ratio must be in [0, 1), got {args.cache_hit_ratio}")
    if args.speedup <= 0:
        raise UserError(f"--speedup must be > 0, got {args.speedup}")
    from moe_operator.cli._common import load_catalog

    deployment = load_manifest(args.spec)
    catalog = load_catalog(args.catalog)
    pools, weights = pool_models_from_spec(deployment, catalog)
    settings = settings_from_spec(deployment.spec.autoscaling, weights)
    trace = load_trace(args.trace, args.speedup, args.cache_hit_ratio)
    if args.calibrate and args.model != "replica":
        raise UserError("--calibrate fits the per-replica model: use it with --model replica")
    if args.router is not None and args.model != "replica":
        raise UserError("--router routes between replicas: use it with --model replica")
    if args.prefix_cache != "replica" and args.model != "replica":
        raise UserError("--prefix-cache chooses the replica model's caches: use it with --model replica")
    router = args.router or "least-loaded"
    profiles, calibration = (
        _calibrate(args.calibrate, deployment, [p.name for p in pools]) if args.calibrate else ({}, {})
    )
    extra = {"model": args.model, "max_context_tokens": deployment.spec.model.max_context_tokens}
    if args.model == "replica":
        from moe_operator.autoscaling.simulate.prefix_cache import cache_blocks_from_spec

        cache_blocks = cache_blocks_from_spec(deployment.spec, catalog, trace.block_tokens)
        extra.update(router=router, cache_blocks=cache_blocks, max_queue=deployment.spec.serving.max_queue,
                     per_replica_cache=args.prefix_cache == "replica")
    if profiles:
        extra["profiles"] = profiles
        for r in calibration.values():
            r["appliedToSimulation"] = True

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    total = int(len(policies) * (trace.duration_s + 1))
    with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("replay", total=total)
        out = simulate(trace, pools, settings, policies, deployment.spec.serving.max_batch_size,
                       on_second=lambda: progress.advance(task), **extra)
    results, opt = out["results"], out["optimum"]

    if args.plot:
        from moe_operator.autoscaling.simulate.plots import plot_results
        plot_results(results, [p.name for p in pools], args.plot,
                     f"{trace.name} x{args.speedup:g} on {deployment.metadata.name}")

    doc = {
        "version": JSON_VERSION,
        "trace": {
            "file": args.trace,
            "requests": len(trace),
            "durationSeconds": round(trace.duration_s, 1),
            "speedup": args.speedup,
            "cacheHitRatio": round(trace.cache_hit_ratio, 4),
            "tokens": round(trace.total_tokens),
            "blockTokens": trace.block_tokens if trace.blocks is not None else None,
        },
        "model": args.model,
        "router": router if args.model == "replica" else None,
        "cacheBlocksPerReplica": next((r.cache_blocks for r in results.values() if r.cache_blocks is not None), None),
        "spec": {
            "name": deployment.metadata.name,
            "pools": [
                {
                    "name": p.name,
                    "pricePerHour": p.price_per_hour,
                    "capacityWorkPerSecond": p.capacity,
                    "minReplicas": p.min_replicas,
                    "maxReplicas": p.max_replicas,
                    "coldStartSeconds": p.cold_start_s,
                }
                for p in pools
            ],
            "workWeights": {
                "prompt": round(weights.prompt, 5),
                "cachedPrompt": round(weights.cached_prompt, 5),
                "generated": 1.0,
            },
            "slo": {"ttftSeconds": settings.ttft_p95_s, "tpotSeconds": settings.tpot_p95_s},
            "targetUtilization": settings.target_utilization,
            "budget": {
                "maxHourlyCost": settings.max_hourly_cost,
                "maxCostPerMillionTokens": settings.max_cost_per_million,
            },
        },
        "optimum": {
            "milpCost": round(opt.cost, 4),
            "lpLowerBound": round(opt.lp_bound, 4),
            "peakHourlyCost": round(opt.peak_hourly_cost, 4),
            "unmetDemandWorkUnits": round(opt.unmet_work, 1),
        },
        "policies": {name: r.to_json() for name, r in results.items()},
    }
    cold = out.get("cold_start_optimum")
    if cold is not None:
        doc["coldStartOptimum"] = {"milpCost": round(cold.cost, 4), "peakHourlyCost": round(cold.peak_hourly_cost, 4),
                                   "unmetDemandWorkUnits": round(cold.unmet_work, 1)}
    if calibration:
        doc["calibration"] = calibration
    if "ours" in results and opt.cost > 0:
        doc["oursVsOptimum"] = round(results["ours"].total_cost / opt.cost, 4)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    from rich.table import Table

    title = f"{trace.name} (x{args.speedup:g}, {len(trace)} requests) on {deployment.metadata.name}"
    if args.model == "replica":
        title += f", {router} routing"
    table = Table(title=title)
    for col in ("policy", "cost $", "$/1M tok", "SLO met", "attainable SLO", "cache hit", "TTFT p95 s", "peak $/h",
                "over budget s", "actions", "unmet tok", "mean replicas"):
        table.add_column(col, justify="right" if col != "policy" else "left")
    for name, r in results.items():
        cpm = r.cost_per_million
        over = f"{r.budget_violation_s:.0f}" if settings.max_hourly_cost is not None else "-"
        if r.cost_per_million_violation_s is not None:
            over += f" ($/1M: {r.cost_per_million_violation_s:.0f})"
        table.add_row(
            name,
            f"{r.total_cost:.2f}",
            "-" if cpm is None else f"{cpm:.4f}",
            f"{r.slo_attainment:.2%}",
            "-" if r.attainable_slo_attainment is None else f"{r.attainable_slo_attainment:.2%}",
            "-" if r.cache_hit_ratio is None else f"{r.cache_hit_ratio:.1%}",
            "-" if r.ttft_p95_s is None else f"{r.ttft_p95_s:.2f}",
            f"{r.peak_hourly_cost:.2f}",
            over,
            str(r.scale_actions),
            f"{r.unmet_tokens:.0f}",
            " ".join(f"{k}={v:.1f}" for k, v in r.mean_replicas.items()),
        )
    console = Console(width=None if sys.stdout.isatty() else 180)   # a pipe gets every column, not 80 wide
    console.print(table)
    console.print(f"offline optimum (MILP, HiGHS): ${opt.cost:.2f}; LP lower bound on mean demand: ${opt.lp_bound:.2f}"
                  + (f"; ours / optimum = {doc['oursVsOptimum']:.3f}" if "oursVsOptimum" in doc else ""))
    if settings.max_hourly_cost is not None:
        console.print(f"maxHourlyCost ${settings.max_hourly_cost:g}/h: the references stay within it (optimum peak "
                      f"${opt.peak_hourly_cost:.2f}/h)" + (f"; demand it cannot carry: {opt.unmet_work:.0f} work units"
                                                          if opt.unmet_work > 0 else ""))
    for pool, c in calibration.items():
        pr, fit = c["profile"], c["fit"]
        console.print(
            f"calibrated {pool} from {c['file']}: prefill {pr['prefill_tps']:.1f} tok/s, cached "
            f"{pr['cached_prefill_tps']:.1f} tok/s ({fit['prefill']['cached_source']}), decode step "
            f"{pr['step_base_s'] * 1000:.2f} ms + {pr['step_per_seq_s'] * 1000:.3f} ms x batch, "
            f"{pr['ttft_overhead_s'] * 1000:.0f} ms to every first token outside the engine "
            f"({fit['prefill']['points']} + {fit['decode']['points']} points, TPOT rms "
            f"{fit['decode']['relative_rms']:.1%})"
            + ("" if c["appliedToSimulation"] else "; not applied: this simulator takes no profiles yet")
        )
    if args.plot:
        console.print(f"plot: {args.plot}")
    return 0
