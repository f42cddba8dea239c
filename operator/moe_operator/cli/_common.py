"""Shared flags of ``moectl plan`` and ``moectl render``: the manifest and the catalog overrides."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from moe_operator.catalog import Catalog
from moe_operator.errors import UserError


def add_input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", required=True, metavar="FILE", help="MoEDeployment YAML")
    p.add_argument("--catalog", metavar="FILE",
                   help="catalog overrides: the cluster's catalog ConfigMap YAML (or its data mapping)")
    p.add_argument("--namespace", "-n", default=None, help="namespace (default: the manifest's, else 'default')")


def load_catalog(path: str | None) -> Catalog:
    if not path:
        return Catalog.default()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return Catalog.default().with_overrides(data)


def write_stdout(text: str) -> None:
    """Write to stdout; a reader that went away (``| head``) is not an error."""
    import os
    import sys

    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
