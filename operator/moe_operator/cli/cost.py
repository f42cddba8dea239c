"""`moectl cost`: self-hosted $/1M tokens for a MoEDeployment vs a dated API price table, and break-even volume."""
from __future__ import annotations

import argparse
import json

from moe_operator.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cost",
        help="self-hosting vs API: $/1M tokens and break-even monthly volume",
        description="Compare the spec's self-hosted $/1M tokens at a utilisation and cache-hit "
        "ratio with API prices, and find the monthly volume from which self-hosting wins.",
    )
    p.add_argument("-f", "--filename", required=True, metavar="FILE", help="MoEDeployment YAML")
    p.add_argument(
        "--monthly-tokens", required=True, type=float, metavar="N", help="tokens per month (prompt + generated)"
    )
    p.add_argument(
        "--cache-hit-ratio",
        type=float,
        default=0.5,
        metavar="R",
        help="prompt tokens served from cache, 0..1 (default 0.5)",
    )
    p.add_argument(
        "--output-fraction", type=float, default=0.25, metavar="F", help="fraction of tokens generated (default 0.25)"
    )
    p.add_argument(
        "--utilization", type=float, default=0.6, metavar="U", help="average fleet utilisation, 0..1 (default 0.6)"
    )
    p.add_argument("--catalog", metavar="FILE", help="catalog overrides (ConfigMap YAML)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _check(args) -> None:
    if args.monthly_tokens <= 0:
        raise UserError(f"--monthly-tokens must be > 0, got {args.monthly_tokens:g}")
    if not 0 <= args.cache_hit_ratio <= 1:
        raise UserError(f"--cache-hit-ratio must be in [0, 1], got {args.cache_hit_ratio:g}")
    if not 0 <= args.output_fraction <= 1:
        raise UserError(f"--output-fraction must be in [0, 1], got {args.output_fraction:g}")
    if not 0 < args.utilization <= 1:
        raise UserError(f"--utilization must be in (0, 1], got {args.utilization:g}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    from moe_operator.api import load_manifest
    from moe_operator.autoscaling.from_spec import pool_models_from_spec
    from moe_operator.autoscaling.prices import API_PRICES, PRICES_DATE
    from moe_operator.autoscaling.selfhost import (HOURS_PER_MONTH, break_even_tokens, fleet_for,
                                                   marginal_cost_per_million, monthly_cost)
    from moe_operator.cli._common import load_catalog

    dep = load_manifest(args.filename)
    pools, weights = pool_models_from_spec(dep, load_catalog(args.catalog))
    r, f, u, n = args.cache_hit_ratio, args.output_fraction, args.utilization, args.monthly_tokens
    fleet = fleet_for(pools, weights, n, r, f, u)
    month = monthly_cost(pools, weights, n, r, f, u)
    self_cpm = month / (n / 1e6)
    marginal = marginal_cost_per_million(pools, weights, r, f, u)
    rows = []
    for api in API_PRICES:
        price = api.blended(r, f)
        be = break_even_tokens(pools, weights, price, r, f, u)
        rows.append({"api": api.name, "pricePerMillion": round(price, 4), "apiMonthlyCost": round(price * n / 1e6, 2),
                     "selfHostedWins": month <= price * n / 1e6,
                     "breakEvenMonthlyTokens": None if be is None else float(f"{be:.3g}"), "source": api.source})
    doc = {
        "deployment": dep.metadata.name,
        "monthlyTokens": n,
        "cacheHitRatio": r,
        "outputFraction": f,
        "utilization": u,
        "selfHosted": {
            "fleet": fleet,
            "monthlyCost": round(month, 2),
            "costPerMillion": round(self_cpm, 4),
            "marginalCostPerMillion": round(marginal, 4),
            "hoursPerMonth": HOURS_PER_MONTH,
            "fitsMaxReplicas": all(fleet.get(p.name, 0) <= p.max_replicas for p in pools),
        },
        "pricesDate": PRICES_DATE,
        "apis": rows,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    c = Console()
    c.print(
        f"[bold]{dep.metadata.name}[/]: {n:.3g} tokens/month, cache hit {r:.0%}, output {f:.0%}, utilisation {u:.0%}"
    )
    c.print(f"self-hosted: {', '.join(f'{k}={v}' for k, v in fleet.items())} -> ${month:,.0f}/month = "
            f"${self_cpm:.4f}/1M tokens (at scale: ${marginal:.4f}/1M)")
    if not doc["selfHosted"]["fitsMaxReplicas"]:
        c.print("note: this fleet exceeds the pools' maxReplicas (a what-if: raise maxReplicas to serve this volume)")
    t = Table(title=f"API prices as of {PRICES_DATE} (verify: they change)")
    for col in ("API", "$/1M (this mix)", "API $/month", "self-hosting wins", "break-even tokens/month"):
        t.add_column(col, justify="left" if col == "API" else "right")
    for row in rows:
        be = row["breakEvenMonthlyTokens"]
        t.add_row(
            row["api"],
            f"{row['pricePerMillion']:.4f}",
            f"{row['apiMonthlyCost']:,.0f}",
            "yes" if row["selfHostedWins"] else "no",
            "never" if be is None else f"{be:.3g}",
        )
    c.print(t)
    return 0
