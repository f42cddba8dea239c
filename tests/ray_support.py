"""Start a local Ray for tests, the way a busy 2-core machine needs it.

The raylet can miss Ray's fixed 30 s registration wait when the machine is loaded; a retry after a clean
shutdown succeeds. A Ray that cannot start at all skips locally and fails under CI=true (``need``).
"""
from __future__ import annotations

import contextlib
import os

from require import need


def start_local_ray(attempts: int = 3, **kwargs):
    import ray

    from moe_runtime.local_serve import serve_env_defaults

    serve_env_defaults()   # a proxy slower than Serve's 5 s ready check is killed on a loaded machine
    options = {"num_cpus": 2, "include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": False}
    options.update(kwargs)
    for attempt in range(attempts):
        try:
            ray.init(**options)
            return ray
        except Exception as exc:  # pragma: no cover - depends on the machine
            ray.shutdown()
            if attempt == attempts - 1:
                need("ray", f"ray.init failed {attempts} times: {exc}")
    return ray


@contextlib.contextmanager
def ray_session(env: dict[str, str], **ray_kwargs):
    """A local Ray (``start_local_ray(**ray_kwargs)``) with ``env`` set before it starts (its workers inherit it);
    on exit Serve and Ray are shut down and ``env`` restored. Yields a free loopback port for Serve's proxy."""
    from moe_runtime import local_serve as local
    from runtime_serving.serving_support import free_port

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray = start_local_ray(**{"num_cpus": 2, **ray_kwargs})
    try:
        yield free_port()
    finally:
        local.shutdown()
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def serve_runtime(app_name: str, cfg, env: dict[str, str]):
    """The torch runtime's Serve app on a free loopback port; ``env`` is set before Ray starts (the local Ray
    workers inherit it) and restored afterwards. Yields the app's base URL."""
    from moe_runtime import local_serve as local

    with ray_session(env) as port:
        local.deploy(local.serve_config(app_name, cfg), port=port)
        local.wait_running(app_name, 300)
        yield f"http://127.0.0.1:{port}"
