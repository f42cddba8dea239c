"""Serving the torch engine's app on a local Ray (what ``moectl up`` and the tests drive).

The app is deployed from a serveConfigV2 of the shape of docs/contracts.md section 3, through Serve's own
config API (``ServeDeploySchema`` -> controller ``apply_config``, the Python equivalent of the REST
``PUT /api/serve/applications/`` that KubeRay uses), so the local path proves the rendered config deploys unchanged.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

from moe_runtime.config import RuntimeConfig
from moe_runtime.drain import drain_timeout_s

IMPORT_PATH = "moe_runtime.serve_app:app_builder"


# Serve's controller kills an HTTP proxy that is not ready within RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S (5 s by
# default), and serve.start then fails with ActorDiedError ("killed by ray.kill ... never ran"): on a busy 2-core
# machine a proxy's start (a Python process importing Serve and uvicorn) takes longer than that. Ray's processes
# read these from the environment they start with.
SERVE_ENV_DEFAULTS = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}


def serve_env_defaults() -> None:
    """Put SERVE_ENV_DEFAULTS into os.environ where the user set nothing; call before ray.init."""
    for key, value in SERVE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def pool_resource(pool: str) -> str:
    """The custom Ray resource a pool's worker group advertises (contracts section 3)."""
    return f"pool-{pool}"


def serve_config(app_name: str, cfg: RuntimeConfig, seconds_per_token: float | None = None) -> dict[str, Any]:
    """serveConfigV2 for one torch-engine app: ``args`` is the RuntimeConfig, one deployment per pool + ingress.

    Each engine deployment drains for the longest request ``cfg`` allows (``graceful_shutdown_timeout_s``,
    moe_runtime.drain) at ``seconds_per_token`` (the spec's TPOT target; None: the engine's default figure), as the
    operator renders it."""
    drain = drain_timeout_s(cfg.max_context_tokens, seconds_per_token)
    deployments = [
        {"name": f"engine-{p.name}", "num_replicas": p.num_replicas, "ray_actor_options": p.ray_actor_options,
         "graceful_shutdown_timeout_s": drain}
        for p in cfg.pools
    ]
    deployments.append({"name": "OpenAIIngress", "num_replicas": 1})
    return {"applications": [{
        "name": app_name, "route_prefix": "/", "import_path": IMPORT_PATH,
        "args": cfg.model_dump(mode="json"), "deployments": deployments,
    }]}


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def deploy(config: dict[str, Any], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start Serve's controller and HTTP proxy on ``host:port`` and apply ``config`` (a serveConfigV2 dict)."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate({**config, "http_options": {"host": host, "port": port}})
    client = serve_start(http_options={"host": host, "port": port})
    client.deploy_apps(schema)


def app_status(app_name: str) -> tuple[str, str, dict[str, str]]:
    """(application status, its message, {deployment: status}) as Serve reports them."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return "NOT_STARTED", "", {}
    deps = {name: str(d.status.value if hasattr(d.status, "value") else d.status)
            for name, d in app.deployments.items()}
    status = app.status.value if hasattr(app.status, "value") else str(app.status)
    return str(status), app.message or "", deps


def wait_running(app_name: str, timeout_s: float = 600.0,
                 progress: Callable[[str, dict[str, str]], None] | None = None) -> None:
    """Block until the app is RUNNING; raise RuntimeError with Serve's message if it fails or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, message, deps = app_status(app_name)
        if progress:
            progress(status, deps)
        if status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"application {app_name} is {status}: {message.strip().splitlines()[-1:] or ''}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"application {app_name} not running after {timeout_s:.0f} s (status {status})")
        time.sleep(0.5)


def with_replicas(config: dict[str, Any], replicas: dict[str, int]) -> dict[str, Any]:
    """A copy of ``config`` whose ``engine-<pool>`` deployments have ``replicas[pool]`` num_replicas.

    Raises ValueError when a pool has no engine deployment (the config was not rendered for it).
    """
    import copy

    out = copy.deepcopy(config)
    found = set()
    for app in out["applications"]:
        for dep in app.get("deployments", []):
            for pool, n in replicas.items():
                if dep.get("name") == f"engine-{pool}":
                    # Serve's schema refuses 0; locally every pool's resources exist, so one replica runs
                    dep["num_replicas"] = max(1, int(n))
                    found.add(pool)
    missing = sorted(set(replicas) - found)
    if missing:
        raise ValueError(f"serveConfigV2 has no deployment for pool(s) {missing}")
    return out


def scale(
    config: dict[str, Any], replicas: dict[str, int], host: str = "127.0.0.1", port: int = 8000
) -> dict[str, Any]:
    """Re-apply ``config`` with new per-pool replicas (Serve adds or removes only the difference; the other
    replicas keep serving). Returns the config now applied."""
    new = with_replicas(config, replicas)
    deploy(new, host, port)
    return new


def running_replicas(app_name: str) -> dict[str, int] | None:
    """{pool: RUNNING replicas of engine-<pool>} from Serve's own status; None when Serve cannot say."""
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception:  # noqa: BLE001 (controller busy or gone: unknown, the autoscaler holds)
        return None
    if app is None:
        return None
    out = {}
    for name, d in app.deployments.items():
        if name.startswith("engine-"):
            counts = {str(getattr(k, "value", k)): v for k, v in (d.replica_states or {}).items()}
            out[name[len("engine-"):]] = int(counts.get("RUNNING", 0))
    return out


def shutdown() -> None:
    """Stop Serve (replicas, proxy, controller) and then Ray, each only if running."""
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
