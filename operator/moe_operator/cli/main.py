"""Entry point of `moectl`.

Each subcommand lives in its own module exposing ``register(subparsers)``; modules are imported
lazily so that `moectl plan` works in the slim operator image without torch or ray installed.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from moe_operator.errors import UserError

# Subcommand modules, in the order `moectl --help` lists them.
COMMANDS = ("plan", "render", "models", "up", "simulate", "replay", "cost", "rebalance")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moectl",
        description="Plan, render, serve and simulate Mixture-of-Experts deployments.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"moe_operator.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"moe_operator.cli.{name}":
                raise
            continue  # not built yet in this checkout
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
