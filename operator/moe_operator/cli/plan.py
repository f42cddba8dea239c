"""``moectl plan -f spec.yaml [--json]``: fit, parallelism, placement, capacity and cost per pool.

Same code path as the operator (``planning.plan_deployment``). ``--json`` prints ``DeploymentPlan`` as JSON
(``version`` field; documented in docs/operator.md and docs/capacity-model.md) for scripts and dashboards.
"""
from __future__ import annotations

import argparse
import json

from moe_operator.api import load_manifest
from moe_operator.planning import plan_deployment

from ._common import add_input_flags, load_catalog, write_stdout


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="show fit, parallelism, placement, capacity and cost per pool",
                              description="Plan a MoEDeployment offline, exactly as the operator would.")
    add_input_flags(p)
    p.add_argument("--json", action="store_true", help="print the plan as stable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    m = load_manifest(args.filename)
    result = plan_deployment(m.spec, load_catalog(args.catalog), m.metadata.name)
    if args.json:
        write_stdout(json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        return 0
    _print_table(result)
    return 0


def _print_table(plan) -> None:
    from rich.console import Console
    from rich.table import Table

    md = plan.model
    console = Console()
    console.print(f"[bold]{plan.name}[/bold]: {md.architecture}, {md.total_params / 1e9:.1f}B parameters "
                  f"({md.active_params / 1e9:.1f}B active), {md.experts} experts x {md.moe_layers} MoE layers, "
                  f"top-{md.experts_per_token}; engine {plan.engine}, quantization {plan.quantization}, "
                  f"context {plan.max_context_tokens}, batch {plan.max_batch_size}")
    t = Table(show_header=True, header_style="bold")
    for col in ("pool", "accelerator", "devices", "memory GiB (need/have)", "TP x DP / EP",
                "experts/shard", "decode tok/s", "prefill tok/s", "$/h replica", "$/1M tok", "replicas"):
        t.add_column(col)
    for p in plan.pools:
        par = p.parallelism
        t.add_row(
            p.name, p.accelerator, str(p.devices_per_replica),
            f"{p.fit.needed_gib:.0f}/{p.fit.available_gib:.0f}",
            f"{par.tensor_parallel} x {par.data_parallel} / {par.expert_parallel}",
            p.placement_summary.experts_per_shard,
            f"{p.capacity.decode_tps:,.0f}", f"{p.capacity.prefill_tps:,.0f}",
            f"{p.cost.price_per_replica_hour:.2f}", f"{p.cost.per_million_blended:.3f}",
            f"{p.min_replicas}..{p.max_replicas} (start {p.initial_replicas})",
        )
    console.print(t)
