"""Fixtures of the serving tests: a uvicorn server around the real torch engine.

The engine is the real one (``build_engine`` on the tiny checkpoint, CPU); the HTTP app is the same
``build_http_app`` that the Ray Serve ingress runs. Ray-backed tests live in test_moectl_up.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from require import need
from runtime_serving.serving_support import serve_uvicorn


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
        import uvicorn  # noqa: F401  (serve_uvicorn needs it; a missing one is a need(), not an error)

        from moe_runtime.config import RuntimeConfig
        from moe_runtime.engine import build_engine
        from moe_runtime.server import build_http_app
    except ImportError as exc:
        need("runtime extras (torch, fastapi, uvicorn)", str(exc))
    cfg = RuntimeConfig(**SERVER_CONFIG)
    engine = build_engine(cfg)
    app = build_http_app(engine, pool="cpu")
    url, server, thread = serve_uvicorn(app)
    yield LiveServer(url, engine, cfg)
    server.should_exit = True
    thread.join(30)
