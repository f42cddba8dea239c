"""On real Ray Serve: the rendered router app of a two-pool vLLM deployment (examples/qwen3-moe-mixed.yaml) serves
one OpenAI endpoint at /, driven by the official openai client; requests complete (chat and completions,
streaming and not), most go to the cheaper pool while both have headroom, and with one pool refusing
(back-pressure) they go to the other.

Mocked: vLLM cannot run here, so each pool app's ``ray.serve.llm:build_openai_app`` is swapped for
``fake_llm_pool.build_openai_app`` (same builder args, LLM server deployment name and ``chat``/``completions``
signatures and streaming as Ray Serve LLM's LLMServer; docstring there). The router app is the rendered one,
unchanged, on a local Ray that advertises the head's ``moe-router`` resource.
"""
from __future__ import annotations

import collections
import copy
import os
from pathlib import Path

import pytest
import yaml

from moe_operator.api import load_manifest
from moe_operator.catalog import Catalog
from moe_operator.render import Images
from moe_operator.render.pipeline import plan_and_render
from moe_operator.render.vllm_router import ROUTER_IMPORT_PATH, ROUTER_RESOURCE

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def serve_config(refuse: str | None = None) -> dict:
    m = load_manifest(ROOT / "examples" / "qwen3-moe-mixed.yaml")
    rs = plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), Images()).rayservice
    cfg = copy.deepcopy(yaml.safe_load(rs["spec"]["serveConfigV2"]))
    for app in cfg["applications"]:
        if app["import_path"].startswith("ray.serve.llm:"):
            app["import_path"] = "fake_llm_pool:build_openai_app"
            app["args"]["refuse"] = app["name"].endswith(f"-{refuse}") if refuse else False
    return cfg


@pytest.fixture(scope="module")
def endpoint():
    try:
        from ray import serve  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        from require import need

        need("ray[serve]", str(exc))
    from ray_support import ray_session

    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)   # workers import the fake
    with ray_session({"PYTHONPATH": path}, resources={ROUTER_RESOURCE: 100}) as port:
        yield port


def deploy(cfg: dict, port: int) -> None:
    from moe_runtime import local_serve as rt

    rt.deploy(cfg, port=port)
    for app in cfg["applications"]:
        rt.wait_running(app["name"], 300)


def pools_used(client, n: int) -> collections.Counter:
    """Send ``n`` requests of every kind through /; the pool that served each (the fake's fingerprint)."""
    used = collections.Counter()
    for i in range(n):
        kind = ("chat", "completions")[i % 2]
        stream = i % 4 >= 2
        if kind == "chat":
            call = client.chat.completions.create(model="qwen3-30b-a3b", stream=stream, max_tokens=8,
                                                  messages=[{"role": "user", "content": f"hi {i}"}])
        else:
            call = client.completions.create(model="qwen3-30b-a3b", prompt=f"hi {i}", stream=stream, max_tokens=8)
        if stream:
            chunks = list(call)
            text = "".join((c.choices[0].delta.content or "") if kind == "chat" else c.choices[0].text
                           for c in chunks)
            used[chunks[0].system_fingerprint] += 1
        else:
            text = call.choices[0].message.content if kind == "chat" else call.choices[0].text
            used[call.system_fingerprint] += 1
        assert text.split()[:2] == ["hello", "from"], text
    return used


def test_one_endpoint_at_root_prefers_the_cheaper_pool_and_falls_over(endpoint):
    import openai

    cfg = serve_config()
    (router,) = [a for a in cfg["applications"] if a["route_prefix"] == "/"]
    assert router["import_path"] == ROUTER_IMPORT_PATH
    prices = {p["name"]: p["dollars_per_work"] for p in router["args"]["pools"]}
    cheap, dear = sorted(prices, key=prices.get)
    deploy(cfg, endpoint)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{endpoint}/v1", api_key="x", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["qwen3-30b-a3b"]     # the model once
    import urllib.request

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{endpoint}/metrics", timeout=30).read().decode()
    assert 'moe_router_waiting_requests{model="qwen3-30b-a3b",pool=""} 0' in metrics   # contracts section 4
    used = pools_used(client, 8)
    assert sum(used.values()) == 8 and used[cheap] >= 6, used                  # most to the cheaper pool

    deploy(serve_config(refuse=cheap), endpoint)                               # the cheap pool pushes back
    used = pools_used(client, 4)
    assert used == {dear: 4}, used
