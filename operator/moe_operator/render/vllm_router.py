"""The router app of an ``engine: vllm`` deployment of two or more pools: one OpenAI endpoint at ``/`` (issue 12).

Ray Serve LLM routes one model id per app, so each pool is its own app (render/serve.py ``vllm_apps``, at
``/<pool>``, kept for debugging). In front of them one more app, ``moe_runtime.vllm_router:build_app``, serves
``/`` and calls each pool's LLM server deployment by handle (Serve allows handles across apps), ranking pools by
their $ per work unit (render/serve.py ``_routing``) and in-flight load (docs/operator.md "One endpoint per
deployment").

Where its code comes from: the vLLM pods run Ray's LLM image, which has no ``moe_runtime``. The router therefore
runs on the Ray head only, whose image for such deployments is ``Images.vllm_router`` (images/vllm-router.Dockerfile:
the ray-llm image plus ``moe_runtime``'s torch-free router modules). The head advertises no CPU (no engine work may
land there), so the router asks for ``num_cpus: 0`` and a custom resource ``moe-router`` that only the head has.
"""
from __future__ import annotations

from typing import Any

from .inputs import RenderInput

ROUTER_DEPLOYMENT = "MoERouter"            # the Serve deployment name in moe_runtime.vllm_router
ROUTER_IMPORT_PATH = "moe_runtime.vllm_router:build_app"
ROUTER_RESOURCE = "moe-router"             # custom Ray resource of the head (rayStartParams.resources)
HEAD_ROUTER_SLOTS = 100                    # how much of it the head advertises: router replicas it can hold
WAKE_TIMEOUT_S = 300                       # the longest a request waits for a pool to come up from zero (then 503)
RETRY_AFTER_S = 5
# Ray Serve LLM's prefix-aware request router (``ray.serve.llm.request_router``, in the installed Ray 2.60), set on
# each pool's LLM server deployment behind the router: the router picks the pool, this picks the replica within it
# by the prompt's longest cached prefix, with a load-imbalance guard (the handle in the router's process runs it).
PREFIX_ROUTER = "ray.serve.llm.request_router.PrefixCacheAffinityRouter"


def routed(r: RenderInput) -> bool:
    """Whether the deployment gets a router app: vLLM with two or more pools (one pool serves at ``/`` itself)."""
    return r.engine == "vllm" and len(r.pools) >= 2


def head_resources(r: RenderInput) -> dict[str, float]:
    """Custom Ray resources of the head: ``moe-router`` where the router runs there, else none."""
    return {ROUTER_RESOURCE: HEAD_ROUTER_SLOTS} if routed(r) else {}


def router_app(r: RenderInput, pool_apps: list[dict[str, Any]], routing: dict[str, Any],
               drain_s: int) -> dict[str, Any]:
    """The router's Serve application (docs/contracts.md section 3), given the pools' apps in ``r.pools`` order
    and the plan's prices (render/serve.py ``_routing``: empty when some pool's capacity is unknown, and then the
    pools rank by load alone). Streams pass through the router, so a router replica that stops drains as long as
    an engine replica does (``drain_s``)."""
    prices = routing.get("dollars_per_work") or {}
    rates = {k: routing.get(k) or {} for k in ("prefill_tps", "decode_tps")}
    pools = [{"name": p.name, "app_name": app["name"], "deployment": app["deployments"][0]["name"],
              "max_num_seqs": r.max_batch_size, "max_queue": r.max_queue,
              "dollars_per_work": float(prices.get(p.name, 0.0)),
              **{k: float(v[p.name]) for k, v in rates.items() if p.name in v}}
             for p, app in zip(r.pools, pool_apps)]
    args: dict[str, Any] = {"model_name": r.served_model_name, "pools": pools}
    if routing:
        args["weights"] = {"prompt": routing["prompt_weight"], "cached_prompt": routing["cached_prompt_weight"]}
        slo = {"ttft_s": routing.get("ttft_target_s"), "tpot_s": routing.get("tpot_target_s")}
        if any(slo.values()):
            args["slo"] = {k: v for k, v in slo.items() if v}
    args.update(wake={"timeout_s": WAKE_TIMEOUT_S, "max_waiting": max(1, r.max_queue) * len(pools)},
                retry_after_s=RETRY_AFTER_S)
    return {
        "name": r.name,   # pool apps are <name>-<pool>: no pool name can take it
        "route_prefix": "/",
        "import_path": ROUTER_IMPORT_PATH,
        "args": args,
        "deployments": [{"name": ROUTER_DEPLOYMENT, "num_replicas": 1, "graceful_shutdown_timeout_s": drain_s,
                         "ray_actor_options": {"num_cpus": 0, "resources": {ROUTER_RESOURCE: 1}}}],
    }
