"""A Serve app shaped like a Ray Serve LLM app, without vLLM: what the override test deploys on real Ray Serve.

Same builder signature and deployment layout as ``ray.serve.llm:build_openai_app`` / ``build_dp_openai_app``
(args ``{"llm_configs": [LLMConfig dict]}`` or ``{"llm_config": ...}``; the LLM server deployment is named
``LLMServer:<model id with / -> -- and . -> _>`` or ``DPServer:...`` with the LLMConfig's
``deployment_config.num_replicas`` (times ``data_parallel_size`` for DP, gang-scheduled in groups of that size,
as Ray 2.60's ``DPServer.get_deployment_options`` does); an ingress deployment in front). Replicas only reply
with their actor id, so a test can tell a kept replica from a replaced one. Placement and accelerator fields are
ignored: the test machine has 2 CPUs and no pools.
"""
from __future__ import annotations

import ray
from ray import serve


class LLMServer:
    def __init__(self, llm_config: dict):
        self.model_id = llm_config["model_loading_config"]["model_id"]

    def __call__(self, *_args) -> str:
        return ray.get_runtime_context().get_actor_id()


class DPServer(LLMServer):
    pass


@serve.deployment(name="LLMRouter", ray_actor_options={"num_cpus": 0})
class Router:
    def __init__(self, servers: list):
        self.servers = servers

    async def __call__(self, request) -> str:
        return await self.servers[0].remote()


def _server(cls, cfg: dict):
    dc = cfg.get("deployment_config") or {}
    name = dc.get("name") or cfg["model_loading_config"]["model_id"].replace("/", "--").replace(".", "_")
    options = {"name": f"{cls.__name__}:{name}", "num_replicas": int(dc.get("num_replicas", 1)),
               "ray_actor_options": {"num_cpus": 0.05}}
    if cls is DPServer:
        from ray.serve.config import GangPlacementStrategy, GangSchedulingConfig

        dp = int(cfg["engine_kwargs"]["data_parallel_size"])
        options["num_replicas"] *= dp
        options["gang_scheduling_config"] = GangSchedulingConfig(gang_size=dp,
                                                                 gang_placement_strategy=GangPlacementStrategy.PACK)
    return serve.deployment(cls, **options).bind(llm_config=cfg)


def build_openai_app(args: dict):
    return Router.bind([_server(LLMServer, c) for c in args["llm_configs"]])


def build_dp_openai_app(args: dict):
    return Router.bind([_server(DPServer, args["llm_config"])])
