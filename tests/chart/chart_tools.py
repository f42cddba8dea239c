"""Shared by the chart tests: where the chart and helm are, rendering with `helm template`, contract metric names."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "moe-operator"
VALUES_DIR = Path(__file__).resolve().parent / "values"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
RELEASE, RELEASE_NAMESPACE = "moe", "moe-system"
#: Kubernetes version `helm template` renders for (Capabilities); the control plane's minor (hack/versions.env).
KUBE_VERSION = "1.36.0"

sys.path.insert(0, str(ROOT / "hack"))


def find_helm() -> str | None:
    """helm from MOE_TEST_BINARIES, the hack/test-binaries.sh cache, or PATH; None when not built yet."""
    import k8s_stack  # hack/k8s_stack.py: the same binary cache the control plane uses

    version = k8s_stack.versions()["HELM_VERSION"]
    candidates = [os.environ.get("MOE_TEST_BINARIES"), os.environ.get("KUBEBUILDER_ASSETS"),
                  str(k8s_stack.default_bin_dir()), str(k8s_stack.bin_cache() / f"helm-{version}")]
    for d in candidates:
        if d and os.access(Path(d) / "helm", os.X_OK):
            return str(Path(d) / "helm")
    return shutil.which("helm")


def helm(*args: str, check: bool = True, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run helm (the caller has checked find_helm()); HOME-independent cache/config dirs under the system tmp."""
    binary = find_helm()
    assert binary, "helm not found"
    run_env = {**os.environ, **(env or {})}
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        run_env.setdefault(var, f"/tmp/moe-helm-{os.getuid()}/{sub}")
    proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, env=run_env)
    if check and proc.returncode:
        raise AssertionError(f"helm {' '.join(args)} -> rc {proc.returncode}\n{proc.stderr}")
    return proc


def template_text(*values_files: Path, set_values: tuple[str, ...] = ()) -> str:
    """`helm template` of the chart as release moe in moe-system (CRDs excluded, like the goldens)."""
    args = ["template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--kube-version", KUBE_VERSION]
    for f in values_files:
        args += ["-f", str(f)]
    for s in set_values:
        args += ["--set", s]
    return helm(*args).stdout


def render(*values_files: Path, set_values: tuple[str, ...] = ()) -> list[dict]:
    """The rendered objects, parsed."""
    return [d for d in yaml.safe_load_all(template_text(*values_files, set_values=set_values)) if d]


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def contract_metrics() -> dict[str, str]:
    """Metric name -> type, from the tables of docs/contracts.md sections 4 (runtime) and 6 (operator)."""
    text = (ROOT / "docs" / "contracts.md").read_text()
    out: dict[str, str] = {}
    section = None
    for line in text.splitlines():
        head = re.match(r"^## (\d+)\.", line)
        if head:
            section = head.group(1)
            continue
        row = re.match(r"^\| `([a-z_:][a-z0-9_:]*)` \| (\w+) \|", line)
        if row and section in {"4", "6"}:
            out[row.group(1)] = row.group(2)
    return out


def series_names(metrics: dict[str, str]) -> set[str]:
    """Names a PromQL query may select: each metric, plus _bucket/_sum/_count of histograms."""
    names = set(metrics)
    for name, kind in metrics.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


#: PromQL words that are not metric names: functions, aggregations, keywords, label names.
_PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "irate", "histogram_quantile", "and",
    "or", "unless", "on", "ignoring", "group_left", "group_right", "bool", "offset", "topk", "bottomk", "abs",
    "clamp_min", "clamp_max", "label_values", "le", "vector", "scalar", "time", "absent", "delta", "deriv",
}


def metric_selectors(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (identifiers not followed by '(' and outside braces/strings)."""
    stripped = re.sub(r'"[^"]*"', '""', expr)                 # string literals
    stripped = re.sub(r"label_values\(([^,()]*(?:\{\})?[^,()]*),\s*\w+\s*\)", r"label_values(\1)", stripped)
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)           # label matchers
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "[]", stripped)          # range selectors
    stripped = re.sub(r"\$[a-zA-Z_][a-zA-Z0-9_]*", " ", stripped)  # dashboard variables
    names = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", stripped):
        word, call = m.group(1), m.group(2)
        if call or word in _PROMQL_WORDS or re.fullmatch(r"[0-9eE.]+", word):
            continue
        names.add(word)
    return names


def grouping_labels(expr: str) -> set[str]:
    """Label names in by (...) / without (...) / on (...) clauses."""
    labels = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return labels
