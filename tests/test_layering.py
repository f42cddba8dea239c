"""The flow stays one-directional (docs/development.md, "Package map"): api -> catalog -> planning -> render ->
autoscaling -> handlers / cli, and the runtime never imports the operator. Every import is read from the source (also
those inside functions: a lazy import is still a dependency), so a new arrow against the flow fails here with the
file and line that adds it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPERATOR = ROOT / "operator" / "moe_operator"
RUNTIME = ROOT / "runtime" / "moe_runtime"

# What each top-level part of moe_operator may import from moe_operator (itself always), and from moe_runtime.
MAY_IMPORT: dict[str, set[str]] = {
    "__init__": set(),
    "errors": set(),
    "api": {"errors"},
    "catalog_data": {"errors"},
    "model_catalog": {"catalog_data", "errors", "planning"},   # planning only inside one function: see below
    "catalog": {"catalog_data", "model_catalog", "errors"},
    "boundedhttp": set(),
    "planning": {"catalog", "errors"},
    "render": {"api", "catalog", "errors", "planning", "moe_runtime.drain"},
    "autoscaling": {"api", "boundedhttp", "catalog", "errors", "planning", "render", "moe_runtime.routing"},
    "loadtest": {"autoscaling", "errors"},
    "handlers": {"api", "autoscaling", "boundedhttp", "catalog", "errors", "planning", "render"},
    "cli": {"api", "autoscaling", "catalog", "errors", "loadtest", "planning", "render", "moe_runtime"},
    "operator_main": {"errors", "handlers", "render"},
}
# model_catalog derives a model's planning facts with planning.model, imported inside the function that needs it:
# the catalog is below planning, and this one call goes up. Any other upward import fails.
LAZY_EXCEPTIONS = {("model_catalog", "planning")}


def imports(path: Path, base: Path) -> list[tuple[str, int, bool]]:
    """(absolute module, line, at module level) of every import in ``path``; ``base`` holds the top package."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    rel = path.with_suffix("").relative_to(base).parts
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = list(rel[:len(rel) - node.level])
                out.append((".".join(parent + ([node.module] if node.module else [])), node.lineno, id(node) in top))
            elif node.module in ("moe_operator", "moe_runtime"):   # from moe_runtime import routing
                out += [(f"{node.module}.{a.name}", node.lineno, id(node) in top) for a in node.names]
            else:
                out.append((node.module or "", node.lineno, id(node) in top))
    return out


def violations(package: Path) -> list[str]:
    """Imports of ``package`` (a moe_operator tree) against MAY_IMPORT, as ``file:line: what``."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        src = path.relative_to(package).with_suffix("").parts[0]
        allowed = MAY_IMPORT.get(src)
        if allowed is None:
            bad.append(f"{path.name}: {src} is a new top-level part; add it to MAY_IMPORT and the map")
            continue
        for module, line, at_top in imports(path, package.parent):
            if module.startswith("moe_operator."):
                dst = module.split(".")[1]
            elif module.startswith("moe_runtime"):
                dst = ".".join(module.split(".")[:2])
                if "moe_runtime" in allowed:
                    continue
            else:
                continue
            where = f"{path.relative_to(package.parent)}:{line}"
            if dst != src and dst not in allowed:
                bad.append(f"{where}: {src} imports {module}")
            elif (src, dst) in LAZY_EXCEPTIONS and at_top:
                bad.append(f"{where}: {src} imports {dst} at module level")
    return bad


def test_operator_imports_follow_the_flow():
    bad = violations(OPERATOR)
    assert bad == [], "\n".join(bad)


def test_the_runtime_never_imports_the_operator():
    bad = [f"{p.relative_to(ROOT)}:{line}: {m}" for p in sorted(RUNTIME.rglob("*.py"))
           for m, line, _ in imports(p, RUNTIME.parent) if m.startswith("moe_operator")]
    assert bad == [], "\n".join(bad)


def test_the_check_sees_imports_against_the_flow(tmp_path):
    """The checker itself, on a small tree: an upward import and a lazy exception made eager are both reported."""
    pkg = tmp_path / "moe_operator"
    (pkg / "planning").mkdir(parents=True)
    (pkg / "planning" / "probe.py").write_text("import os\nfrom moe_operator.handlers import kube\n")
    (pkg / "model_catalog.py").write_text("from moe_operator.planning.model import model_facts\n")
    (pkg / "render").mkdir()
    (pkg / "render" / "ok.py").write_text("from ..planning import plan\nfrom . import inputs\n")
    assert violations(pkg) == ["moe_operator/model_catalog.py:1: model_catalog imports planning at module level",
                               "moe_operator/planning/probe.py:2: planning imports moe_operator.handlers"]
