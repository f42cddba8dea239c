"""The runtime admin API of docs/contracts.md section 7, mounted on the ingress's FastAPI app (docs/http-api.md).

``GET /admin/v1/experts`` and ``POST /admin/v1/placement``, behind ``Authorization: Bearer <MOE_ADMIN_TOKEN>``.
With the token unset or empty the routes are not mounted at all (404, like any unknown route); a missing or wrong
token is 401. The backend (``placement_board.BoardClient`` under Ray Serve) does the work; this module only
authenticates, validates and shapes errors like the OpenAI routes (``{"error": {message, type, param, code}}``).
"""
from __future__ import annotations

import hmac
import os
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from moe_runtime import openai_api as oa
from moe_runtime.placement_board import PlacementSuperseded, canonical_placement
from moe_runtime.server import read_body

TOKEN_ENV = "MOE_ADMIN_TOKEN"
PREFIX = "/admin/v1"


class AdminBackend(Protocol):
    pools: list[str]
    initial: dict[str, Any] | None  # the rendered placement (None: experts in-process, nothing to move)
    shape: tuple[int, int]  # (MoE layers, experts) of the served model

    async def experts(self) -> dict[str, Any]: ...

    async def post(self, pool: str, doc: dict[str, Any]) -> str: ...


def admin_token() -> str:
    """The admin token from the environment ('' = admin API off)."""
    return os.environ.get(TOKEN_ENV, "").strip()


def check_token(header: str | None, token: str) -> None:
    """Raise a 401 APIError unless ``header`` is ``Bearer <token>`` (constant-time comparison)."""
    scheme, _, given = (header or "").partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
    if not ok:
        raise oa.APIError(401, "missing or wrong admin token: send 'Authorization: Bearer <MOE_ADMIN_TOKEN>'",
                          type="authentication_error", code="invalid_admin_token")


def parse_placement_request(body: dict[str, Any], pools: list[str], shape: tuple[int, int],
                            initial: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(pool, canonical placement) from a POST body, or the 400/404 APIError to answer."""
    pool, doc = body.get("pool"), body.get("placement")
    extra = sorted(set(body) - {"pool", "placement"})
    if extra:
        raise oa.APIError(400, f"unknown field(s) {extra}; the body is {{\"pool\": ..., \"placement\": ...}}",
                          param=extra[0], code="invalid_value")
    if not isinstance(pool, str) or not pool:
        raise oa.APIError(400, "'pool' must be a pool name (string)", param="pool", code="invalid_value")
    if not isinstance(doc, dict):
        raise oa.APIError(400, "'placement' must be a placement object (docs/contracts.md section 2)",
                          param="placement", code="invalid_value")
    if pool not in pools:
        raise oa.APIError(404, f"unknown pool {pool!r}; this application serves {pools}", param="pool",
                          code="unknown_pool")
    if initial is None:
        raise oa.APIError(400, "this application runs its experts in-process (placement: null): there are no "
                          "expert shards to move; deploy it with a placement", param="placement",
                          code="no_placement")
    try:  # the served model's shape first, by counting: nothing is built from a placement for another model
        canon = canonical_placement(doc, model=shape)
    except ValueError as exc:
        raise oa.APIError(400, f"invalid placement: {exc}", param="placement", code="invalid_placement") from None
    return pool, canon


def mount_admin_routes(app: FastAPI, backend: AdminBackend, token: str | None = None) -> bool:
    """Add the admin routes to ``app`` when a token is set (``token`` or env MOE_ADMIN_TOKEN); returns whether."""
    token = admin_token() if token is None else token.strip()
    if not token:
        return False

    def auth(request: Request) -> None:
        check_token(request.headers.get("authorization"), token)

    app.add_exception_handler(oa.APIError, oa.handle_api_error)  # the same as the OpenAI routes'

    async def board(call):
        """Await a backend call; only an unreachable board (timeout, connection, Ray actor error) is 503."""
        try:
            return await call
        except PlacementSuperseded as exc:
            raise oa.APIError(409, str(exc), param="placement", code="placement_superseded") from None
        except (TimeoutError, ConnectionError) as exc:  # the board restarting or gone: the client retries
            raise oa.APIError(503, f"placement board unavailable ({type(exc).__name__}: {exc}); retry in a few "
                              "seconds", type="server_error", code="board_unavailable", retry_after_s=5) from None

    @app.get(PREFIX + "/experts")
    async def experts(request: Request):
        auth(request)
        return await board(backend.experts())

    @app.post(PREFIX + "/placement")
    async def placement(request: Request):
        auth(request)
        pool, doc = parse_placement_request(oa.parse_body(await read_body(request)), backend.pools, backend.shape,
                                            backend.initial)
        pid = await board(backend.post(pool, doc))
        return JSONResponse({"pool": pool, "placementId": pid}, status_code=202)

    return True
