"""``moectl render -f spec.yaml``: the RayService YAML the operator would apply (same code path)."""
from __future__ import annotations

import argparse

from moe_operator.api import load_manifest
from moe_operator.render import Images, dump
from moe_operator.render.pipeline import plan_and_render

from ._common import add_input_flags, load_catalog, write_stdout


def register(subparsers) -> None:
    p = subparsers.add_parser("render", help="print the RayService YAML for a MoEDeployment",
                              description="Plan a MoEDeployment and print the KubeRay RayService the operator applies.")
    add_input_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    m = load_manifest(args.filename)
    namespace = args.namespace or m.metadata.namespace or "default"
    out = plan_and_render(m.metadata.name, namespace, m.spec, load_catalog(args.catalog), Images.from_env())
    write_stdout(dump(out.rayservice))
    return 0
