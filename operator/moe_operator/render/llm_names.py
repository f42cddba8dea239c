"""Names and counts of the Ray Serve LLM server deployment inside an ``engine: vllm`` app (render and actuator).

A pool's live replica count is a ``deployments: [{name, num_replicas}]`` override in its Serve app, not the
LLMConfig's ``deployment_config.num_replicas`` inside ``args``: Serve hashes ``args`` into the app's code
version, so a changed ``args`` replaces every replica (weights reloaded), while a changed override only adds
or removes replicas (docs/benchmarks/autoscaling-actuation.md). An override must name a deployment the app
really builds (Serve fails the whole app with "Deployment '<name>' does not exist" otherwise), so the name
follows Ray Serve LLM's builder, checked in the source of Ray 2.49.1, 2.58.0 (the vLLM images' pin,
``Images.vllm_ray_version``) and 2.60.0 (installed):

* ``build_openai_app``: ``"LLMServer:" + deployment_config.name``, and without a name the model id with ``/``
  -> ``--`` and ``.`` -> ``_`` (2.49.1 ``builders/application_builders.build_llm_deployment`` +
  ``LLMConfig.get_serve_options``; 2.60 ``core/server/builder.build_llm_deployment``, prefix
  ``f"{deployment_cls.__name__}:"``, also with ``RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING``, whose
  ``serve.ingress`` wrapper copies the class name);
* ``build_dp_openai_app`` (2.60; absent from 2.49.1's ``ray.serve.llm``): ``"DPServer:" + ...`` the same way,
  and Serve runs ``num_replicas x data_parallel_size`` replicas, gang-scheduled in groups of
  ``data_parallel_size`` (``DPServer.get_deployment_options``). An override bypasses that builder, so it
  carries the multiplied count (Serve refuses a count that is not a multiple of the gang size).
"""
from __future__ import annotations

from typing import Any, Mapping

# import_path of the app -> the Serve deployment class whose name prefixes the LLM server deployment's name
SERVER_CLASS = {
    "ray.serve.llm:build_openai_app": "LLMServer",
    "ray.serve.llm:build_dp_openai_app": "DPServer",
}


def model_id(cfg: Mapping[str, Any]) -> str:
    """The LLMConfig's model id (``model_loading_config.model_id``)."""
    return str((cfg.get("model_loading_config") or {}).get("model_id", ""))


def llm_deployment_name(import_path: str, cfg: Mapping[str, Any]) -> str | None:
    """Name Serve gives the LLM server deployment of ``cfg`` in an app built by ``import_path``; None if unknown."""
    server = SERVER_CLASS.get(str(import_path))
    if server is None:
        return None
    dc = cfg.get("deployment_config") or {}
    base = dc.get("name") or model_id(cfg).replace("/", "--").replace(".", "_")
    return f"{server}:{base}" if base else None


def serve_replicas_per_replica(import_path: str, cfg: Mapping[str, Any]) -> int:
    """Serve replicas per autoscaler replica.

    ``data_parallel_size`` for a DP app (one replica = one DP group), else 1.
    """
    if SERVER_CLASS.get(str(import_path)) != "DPServer":
        return 1
    dp = (cfg.get("engine_kwargs") or {}).get("data_parallel_size", 1)
    return int(dp) if isinstance(dp, int) and dp > 0 else 1


def serve_count(replicas: int) -> int:
    """The Serve ``num_replicas`` of a pool that has ``replicas`` (render and actuator): never below 1, because
    Serve's REST schema (``ServeDeploySchema``, what KubeRay submits serveConfigV2 through) refuses 0. A pool at
    zero keeps one Serve replica that cannot be placed, since its worker group has no pods: it costs nothing,
    serves nothing, and the router holds requests for it (docs/routing.md, "Wake from zero")."""
    return max(1, int(replicas))
