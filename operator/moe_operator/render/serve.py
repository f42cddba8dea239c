"""serveConfigV2 of the RayService: the torch engine's app (contracts section 3) or Ray Serve LLM apps.

Field names of the vLLM side are those of ``ray.serve.llm.LLMConfig`` (model_loading_config, engine_kwargs,
accelerator_type, placement_group_config, deployment_config) and of vLLM's ``EngineArgs``
(tensor_parallel_size, data_parallel_size, enable_expert_parallel, quantization, enable_prefix_caching,
block_size, max_model_len, max_num_seqs); tests/render validate them against the installed Ray.

Replicas: our autoscaler owns them and patches ``num_replicas``; no Serve ``autoscaling_config`` is rendered,
because two autoscalers on one deployment would fight. In a vLLM app the LLMConfig keeps the spec's start count
and the live count is a ``deployments[]`` override of the LLM server deployment (llm_names.py says why).

Scale-down drains: every engine deployment (the torch ``engine-<pool>``, the vLLM LLM server) gets
``graceful_shutdown_timeout_s`` from ``drain_s`` (drain.py), in the ``deployments[]`` entry, never in ``args``: a
change of it reconfigures the running replicas in place, where a change of ``args`` would replace them all.
"""
from __future__ import annotations

from typing import Any

import yaml

from moe_operator.catalog import TORCH_DEVICE

from .drain import drain_timeout_s
from .fastyaml import BaseDumper, load
from .inputs import PoolRender, RenderInput
from .llm_names import llm_deployment_name, serve_count, serve_replicas_per_replica
from .templates import env


def runtime_args(r: RenderInput) -> dict[str, Any]:
    """``RuntimeConfig`` (moe_runtime.config) as snake_case args of the torch app."""
    vendors = {p.vendor for p in r.pools}
    device = TORCH_DEVICE[next(iter(vendors))] if len(vendors) == 1 else "auto"
    placement = next((p.placement for p in r.pools if p.placement), None)   # the first pool's: older runtimes
    return {
        "model_name": r.served_model_name,
        "model_source": r.model_source,
        "device": device,
        "dtype": _dtype(vendors),
        "quantization": r.quantization,
        "placement": placement,
        # The live count goes only into the deployments' num_replicas (serve_torch template): a change of ``args``
        # makes Ray Serve rebuild the app and replace every replica, so args keep the spec's start count.
        "pools": [
            {"name": p.name, "num_replicas": p.replicas if p.initial_replicas is None else p.initial_replicas,
             "ray_actor_options": {"resources": {p.pool_resource: 1}},
             **_own(p, {"device": device, "dtype": _dtype(vendors), "placement": placement})}
            for p in r.pools
        ],
        "cache": {k: r.cache[k] for k in ("prefix", "block_tokens", "memory_bytes", "disk_dir", "disk_bytes")},
        "max_batch_size": r.max_batch_size,
        "max_queue": r.max_queue,
        "max_context_tokens": r.max_context_tokens,
        "metrics_labels": {},
        **_routing(r),
    }


def _routing(r: RenderInput) -> dict[str, Any]:
    """The router's pool prices (moe_runtime.routing), for apps of two or more pools whose plan gives every
    pool's rates: $ per work unit = price per replica-hour / 3600 / decode tokens/s (a generated token is one
    work unit, as in the autoscaler), prompt and cached prompt tokens weighted by the mean rate ratio over pools
    (the autoscaler's weights_from_capacities); each pool's prefill rate and the SLO's TTFT, from which the
    router predicts a replica's next first token. Single-pool apps render without it: one pool has no price to
    compare, and their args stay as before."""
    caps = [p.capacity for p in r.pools]
    if len(caps) < 2 or any(c is None or c["decode_tps"] <= 0 or c["prefill_tps"] <= 0
                            or c["cached_prefill_tps"] <= 0 for c in caps):
        return {}
    n = len(caps)
    return {"routing": {
        "prompt_weight": round(sum(c["decode_tps"] / c["prefill_tps"] for c in caps) / n, 9),
        "cached_prompt_weight": round(sum(c["decode_tps"] / c["cached_prefill_tps"] for c in caps) / n, 9),
        "dollars_per_work": {p.name: float(f"{p.capacity['price_per_hour'] / 3600 / p.capacity['decode_tps']:.6g}")
                             for p in r.pools},
        "prefill_tps": {p.name: float(f"{p.capacity['prefill_tps']:.6g}") for p in r.pools},
        "decode_tps": {p.name: float(f"{p.capacity['decode_tps']:.6g}") for p in r.pools},
        **({"ttft_target_s": r.ttft_target_s} if r.ttft_target_s else {}),
        **({"tpot_target_s": r.tpot_target_s} if r.tpot_target_s else {}),
    }}


def _dtype(vendors: set[str]) -> str:
    return "float32" if vendors == {"cpu"} else "bfloat16"


def _own(p: PoolRender, app: dict[str, Any]) -> dict[str, Any]:
    """The pool's device, dtype and expert shards where they differ from the app's (pools of one app may be different
    vendors, or shard differently). Only then: a changed ``args`` makes Serve replace every replica, so apps whose
    pools agree render exactly as before."""
    own = {"device": TORCH_DEVICE[p.vendor], "dtype": _dtype({p.vendor}), "placement": p.placement}
    return {k: v for k, v in own.items() if v != app[k]}


def llm_config(r: RenderInput, pool: PoolRender) -> dict[str, Any]:
    """One Ray Serve LLM ``LLMConfig`` (as a dict) for one pool."""
    engine_kwargs: dict[str, Any] = {
        "tensor_parallel_size": pool.tp,
        "enable_expert_parallel": pool.ep > 1,
        "enable_prefix_caching": bool(r.cache.get("prefix", True)),
        "block_size": _vllm_block_size(r.cache.get("block_tokens", 64)),
        "max_model_len": r.max_context_tokens,
        "max_num_seqs": r.max_batch_size,
    }
    if pool.dp > 1:
        engine_kwargs["data_parallel_size"] = pool.dp
    if r.quantization != "none":
        engine_kwargs["quantization"] = VLLM_QUANTIZATION[r.quantization]
    bundle = {pool.ray_resource: 1, pool.pool_resource: 0.001}
    config: dict[str, Any] = {
        "model_loading_config": {"model_id": r.served_model_name, "model_source": _vllm_source(r.model_source)},
        "engine_kwargs": engine_kwargs,
        "placement_group_config": {
            "bundle_per_worker": bundle,
            # One node holds the whole tensor-parallel group when it fits; else spread over the replica's hosts.
            "strategy": "STRICT_PACK" if pool.hosts_per_replica == 1 else "PACK",
        },
        "deployment_config": {
            # the start count, constant: a changed ``args`` makes Serve replace every replica (vllm_apps overrides it)
            "num_replicas": pool.replicas if pool.initial_replicas is None else pool.initial_replicas,
            "max_ongoing_requests": r.max_batch_size,
            "max_queued_requests": r.max_queue,
        },
    }
    if pool.ray_accelerator_type:
        config["accelerator_type"] = pool.ray_accelerator_type
    from .vllm_router import PREFIX_ROUTER, routed

    if routed(r):   # behind the router: prefix affinity among the pool's replicas is Ray Serve LLM's own
        config["deployment_config"]["request_router_config"] = {"request_router_class": PREFIX_ROUTER}
    return config


# Our quantization names -> vLLM's ``--quantization`` values. int8/int4 need pre-quantized checkpoints
# (compressed-tensors W8A8 / W4A16 from llm-compressor), which vLLM detects from the checkpoint's config.
VLLM_QUANTIZATION = {"fp8": "fp8", "int8": "compressed-tensors", "int4": "compressed-tensors"}


def _vllm_block_size(block_tokens: int) -> int:
    """vLLM accepts block sizes 1..256 in powers of two; use the largest not above the spec's block."""
    size = 1
    while size * 2 <= min(int(block_tokens), 256):
        size *= 2
    return size


def _vllm_source(source: str) -> str:
    """hf://org/name -> org/name (a Hugging Face id); pvc://<claim>/<path> -> /models/<path> (render mounts it)."""
    if source.startswith("hf://"):
        return source[len("hf://"):]
    if source.startswith("pvc://"):
        claim_and_path = source[len("pvc://"):]
        path = claim_and_path.split("/", 1)[1] if "/" in claim_and_path else ""
        return "/models/" + path
    return source


def vllm_apps(r: RenderInput) -> list[dict[str, Any]]:
    """One Serve application per pool; a single pool serves at "/", several at "/<pool>" behind one more app,
    the router at "/" (vllm_router.py: one OpenAI endpoint per deployment).

    The live count goes into ``deployments: [{name: <LLM server deployment>, num_replicas}]`` (Serve replicas:
    DP groups x data_parallel_size for a DP app), which the autoscaler's actuator patches; ``args`` stay put.
    """
    apps = []
    for pool in r.pools:
        cfg = llm_config(r, pool)
        if pool.dp > 1:
            import_path, args = "ray.serve.llm:build_dp_openai_app", {"llm_config": cfg}
        else:
            import_path, args = "ray.serve.llm:build_openai_app", {"llm_configs": [cfg]}
        apps.append({
            "name": f"{r.name}-{pool.name}",
            "route_prefix": "/" if len(r.pools) == 1 else f"/{pool.name}",
            "import_path": import_path,
            "args": args,
            "deployments": [{"name": llm_deployment_name(import_path, cfg),
                             "num_replicas": serve_count(pool.replicas) * serve_replicas_per_replica(import_path, cfg),
                             "graceful_shutdown_timeout_s": drain_s(r)}],
        })
    from .vllm_router import router_app, routed

    if routed(r):
        apps.append(router_app(r, apps, _routing(r).get("routing", {}), drain_s(r)))
    return apps


def drain_s(r: RenderInput) -> int:
    """``graceful_shutdown_timeout_s`` of the engine deployments: the longest request the spec allows (drain.py)."""
    return drain_timeout_s(r.max_context_tokens, r.seconds_per_token)


def serve_config(r: RenderInput) -> str:
    """The serveConfigV2 string, rendered from the engine's template and normalised through YAML."""
    if r.engine == "torch":
        text = env().get_template("serve_torch.yaml.j2").render(name=r.name, args=runtime_args(r), pools=r.pools,
                                                                drain_s=drain_s(r))
    else:
        text = env().get_template("serve_vllm.yaml.j2").render(apps=vllm_apps(r))
    return dump(load(text))


class _Dumper(BaseDumper):
    """SafeDumper writing multi-line strings (serveConfigV2) as literal blocks, readable in a diff."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    """Deterministic YAML (insertion order kept, no line folding, multi-line strings as blocks)."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=10**6, default_flow_style=False)
