"""``moectl models [--json] [--catalog FILE]``: the model catalog, what a MoEDeployment can name instead of a config.

Each model's figures come from planning's own formulas (``planning.model.model_facts``, ``planning.fit.weights_bytes``),
so they are what ``moectl plan`` uses. ``--catalog`` applies the cluster's catalog ConfigMap (its ``models`` key).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from moe_operator.planning.fit import BYTES_PER_PARAM, GIB, weights_bytes
from moe_operator.planning.model import model_facts

from ._common import load_catalog, write_stdout


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the model catalog (spec.model.catalogName / hf:// sources)",
                              description="List the models planning knows by name: parameters, experts, layers, "
                              "published weights dtype and weight bytes at each quantization.")
    p.add_argument("--catalog", metavar="FILE",
                   help="catalog overrides: the cluster's catalog ConfigMap YAML (or its data mapping)")
    p.add_argument("--json", action="store_true", help="print the catalog as JSON")
    p.set_defaults(func=run)


def rows(catalog) -> list[dict[str, Any]]:
    """One row per catalog model; parameters are counts, weightsBytes bytes (16-bit embeddings, as planning counts)."""
    out = []
    for name in catalog.models.keys():
        entry = catalog.models.get(name)
        f = model_facts(entry.config)
        out.append({
            "name": name, "huggingFace": entry.hugging_face, "architecture": f.architecture,
            "totalParams": f.total_params, "activeParams": f.active_params, "experts": f.num_experts,
            "expertsPerToken": f.experts_per_token, "layers": f.num_layers, "weightsDtype": entry.weights_dtype,
            "copiedOn": entry.copied_on, "weightsBytes": {q: weights_bytes(f, q) for q in BYTES_PER_PARAM},
        })
    return out


def run(args: argparse.Namespace) -> int:
    table = rows(load_catalog(args.catalog))
    if args.json:
        write_stdout(json.dumps(table, indent=2) + "\n")
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(
        box=box.SIMPLE_HEAD,
        header_style="bold",
        pad_edge=False,
        caption="weights: GiB at each spec.quantization (none = 16-bit here; with none an fp8 checkpoint plans at its "
        "fp8 size); dtype: the published checkpoint's",
    )
    t.add_column("name", no_wrap=True)
    for col in ("arch", "total", "active", "experts", "top-k", "layers", "dtype", *BYTES_PER_PARAM):
        t.add_column(col, justify="left" if col in ("arch", "dtype") else "right", no_wrap=True)
    for r in table:
        t.add_row(
            r["name"], r["architecture"], f"{r['totalParams'] / 1e9:.1f}B", f"{r['activeParams'] / 1e9:.1f}B",
            str(r["experts"]), str(r["expertsPerToken"]), str(r["layers"]), r["weightsDtype"],
            *(f"{b / GIB:,.0f}" for b in r["weightsBytes"].values()),
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: no terminal width to fit, keep every figure whole
        console = Console(width=max(console.width, 120))
    console.print(t)
    for r in table:
        console.print(f"{r['name']}: " + ", ".join(f"hf://{i}" for i in r["huggingFace"]), soft_wrap=True)
    return 0
