"""The HTTP routes as plain methods (server._Routes), called without building the app or a client: each route's
contract can be checked alone, with a fake engine."""
from __future__ import annotations

import asyncio

import pytest

from moe_runtime import openai_api as oa
from moe_runtime import server
from moe_runtime.engine.api import EngineStats


class Engine:
    model_name, max_context_tokens, tokenizer = "tiny-moe", 64, None

    def stats(self):
        return EngineStats()


def routes(admin=None) -> server._Routes:
    return server._Routes(Engine(), "cpu", server.RuntimeMetrics("tiny-moe", {"pool": "cpu"}), 16, admin)


def test_health_and_the_model_card():
    r = routes()
    assert asyncio.run(r.health()) == {"status": "ok", "model": "tiny-moe"}
    card = asyncio.run(r.model("tiny-moe"))
    assert card["id"] == "tiny-moe" and card["max_model_len"] == 64
    assert asyncio.run(r.models())["data"] == [card]
    with pytest.raises(oa.APIError) as err:
        asyncio.run(r.model("another"))
    assert err.value.status == 404


def test_a_board_that_does_not_answer_leaves_the_ready_gauge_out(monkeypatch):
    class Board:
        async def ready(self):
            await asyncio.sleep(5)

    monkeypatch.setattr(server, "BOARD_READY_S", 0.05)
    assert asyncio.run(routes(Board()).board_ready()) == {}
    body = asyncio.run(routes(Board()).metrics_route()).body.decode()
    assert "moe_tokens_total" in body and "moe_ready_replicas" not in body
