"""Start a local Ray for tests, the way a busy 2-core machine needs it.

The raylet can miss Ray's fixed 30 s registration wait when the machine is loaded; a retry after a clean
shutdown succeeds. A Ray that cannot start at all skips locally and fails under CI=true (``need``).
"""
from __future__ import annotations

from require import need


def start_local_ray(attempts: int = 3, **kwargs):
    import ray

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
