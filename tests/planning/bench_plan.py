"""Planning benchmark: latency of plan_deployment vs pool_capacity per example, and the roofline against published
serving figures.

Run: .venv/bin/python tests/planning/bench_plan.py   (not collected by pytest; figures in docs/benchmarks/planning.md)
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_configs import DEEPSEEK_V3, MIXTRAL_8X7B  # noqa: E402
from moe_operator.api import MoEDeploymentSpec  # noqa: E402
from moe_operator.catalog import Catalog  # noqa: E402
from moe_operator.planning import plan_deployment, pool_capacity  # noqa: E402
from moe_operator.planning.capacity import replica_throughput  # noqa: E402
from moe_operator.planning.model import model_facts  # noqa: E402

EXAMPLES = ["tiny-moe.yaml", "mixtral-8x7b-ascend.yaml", "qwen3-moe-mixed.yaml", "deepseek-v3-h800.yaml"]


def latency(catalog: Catalog) -> None:
    print("plan latency (ms, this machine)")
    for name in EXAMPLES:
        spec = MoEDeploymentSpec.model_validate(yaml.safe_load((ROOT / "examples" / name).read_text())["spec"])
        plans, caps = [], []
        for _ in range(20):
            t = time.perf_counter()
            plan_deployment(spec, catalog, "bench")
            plans.append(time.perf_counter() - t)
        for _ in range(200):
            t = time.perf_counter()
            pool_capacity(spec, spec.pools[0], catalog)
            caps.append(time.perf_counter() - t)
        p, c = statistics.median(plans), statistics.median(caps)
        print(f"  {name:28s} plan_deployment median {p * 1e3:7.2f} max {max(plans) * 1e3:7.2f} | "
              f"pool_capacity median {c * 1e3:6.3f} | plan/capacity {p / c:6.1f}x")


def calibration(catalog: Catalog) -> None:
    print("roofline vs published serving figures")
    v3 = model_facts(DEEPSEEK_V3)
    t = replica_throughput(v3, catalog.get("nvidia-h800"), 16, "fp8", 1024, 8192)
    print(f"  DeepSeek-V3 fp8, 16 x H800, B=1024: decode {t.decode_tps / 2:8.0f} tok/s per 8-GPU node "
          f"(DeepSeek reports ~14,800); prefill {t.prefill_tps / 2:8.0f} computed tok/s per node "
          f"(DeepSeek: ~73,700 incl. cache hits); decode/published {t.decode_tps / 2 / 14800:.2f}")
    m = model_facts(MIXTRAL_8X7B)
    t = replica_throughput(m, catalog.get("nvidia-h100"), 2, "none", 1, 2048)
    print(f"  Mixtral-8x7B bf16, 2 x H100, B=1: decode {t.decode_tps:6.0f} tok/s (single-stream vLLM: 100-130)")
    tiny = model_facts(None, "tiny")
    t = replica_throughput(tiny, catalog.get("cpu"), 1, "none", 8, 2048)
    print(
        f"  tiny, cpu, B=8: decode {t.decode_tps:6.0f} tok/s, prefill {t.prefill_tps:8.0f} tok/s "
        f"({t.decode_bound}-bound "
        f"+ per-layer overhead {tiny.num_layers} x {catalog.get('cpu').step_overhead_seconds * 1e3:.1f} ms)"
    )


if __name__ == "__main__":
    c = Catalog.default()
    latency(c)
    calibration(c)
