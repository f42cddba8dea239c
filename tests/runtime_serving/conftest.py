"""Fixtures of the serving tests: a uvicorn server around the real torch engine.

The engine is the real one (``build_engine`` on the tiny checkpoint, CPU); the HTTP app is the same
``build_http_app`` that the Ray Serve ingress runs. Ray-backed tests live in test_moectl_up.py.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from require import need
from runtime_serving.serving_support import free_port


@dataclass
class LiveServer:
    base_url: str
    engine: object
    config: object


SERVER_CONFIG = dict(model_name="tiny-moe", model_source="builtin://tiny-moe", device="cpu", max_batch_size=2,
                     max_queue=4, max_context_tokens=512, cache={"block_tokens": 16, "memory_bytes": 8 << 20})


@pytest.fixture(scope="session")
def live_server():
    """The real tiny engine behind build_http_app, served by uvicorn on a free loopback port."""
    try:
        import uvicorn

        from moe_runtime.config import RuntimeConfig
        from moe_runtime.engine import build_engine
        from moe_runtime.server import build_http_app
    except ImportError as exc:
        need("runtime extras (torch, fastapi, uvicorn)", str(exc))
    cfg = RuntimeConfig(**SERVER_CONFIG)
    engine = build_engine(cfg)
    app = build_http_app(engine, pool="cpu")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield LiveServer(f"http://127.0.0.1:{port}", engine, cfg)
    server.should_exit = True
    thread.join(30)
