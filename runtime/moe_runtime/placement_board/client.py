"""``BoardClient``: the ingress's side of the board (admin API reads and posts, the ready gauge, keepalives)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .state import CALL_TIMEOUT_S, INITIAL_ID, KEEPALIVE_S, _add, placement_id

log = logging.getLogger("moe_runtime.placement_board")


class BoardUnavailable(ConnectionError):
    """The board did not answer in time, or Ray reports its actor dead/unavailable (it restarts): retry later."""


def _ray_actor_errors() -> tuple[type[BaseException], ...]:
    try:
        from ray.exceptions import RayActorError, RaySystemError
    except ImportError:  # no Ray (the in-process tests): no Ray errors to map
        return ()
    return (RayActorError, RaySystemError)


class PlacementSuperseded(Exception):
    """The board kept a placement posted later than ours (``desired``: its id); the admin API answers 409."""

    def __init__(self, pool: str, desired: str | None):
        super().__init__(f"pool {pool!r}: the board holds placement {desired!r}, posted later than this one; read "
                         "GET /admin/v1/experts and post again if it should still change")
        self.pool, self.desired = pool, desired


class BoardClient:
    """The ingress's side: reads the board for the admin API and the ready gauge, posts desired placements, and
    keeps the board alive (and restores what it posted after a board restart) every ``KEEPALIVE_S``."""

    def __init__(self, key: str, board: Callable[[], Any], pools: list[str], initial: dict[str, Any] | None,
                 shape: tuple[int, int], initial_by_pool: dict[str, dict[str, Any] | None] | None = None):
        """``initial``: the rendered placement; ``initial_by_pool``: a pool's own where it has one (mixed vendors)."""
        self.key, self._get_board, self._board = key, board, None
        self.pools, self.initial, self.shape = list(pools), initial, shape
        self.initial_by_pool = dict(initial_by_pool or {})
        self.posted: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task | None = None

    def _handle(self):
        if self._board is None:
            try:
                self._board = self._get_board()
            except Exception as exc:  # noqa: BLE001 (Ray's lookup: no actor yet, GCS restarting)
                raise BoardUnavailable(f"board lookup failed: {type(exc).__name__}: {exc}") from exc
        return self._board

    async def _call(self, method: str, *args):
        """One board call, at most CALL_TIMEOUT_S; a timeout or a Ray actor error is BoardUnavailable (the
        admin API's 503; /metrics and the keepalive carry on), anything else propagates as the bug it is."""
        try:
            return await asyncio.wait_for(getattr(self._handle(), method).remote(self.key, *args), CALL_TIMEOUT_S)
        except TimeoutError:
            self._board = None  # find it again next time (exited, restarted)
            raise BoardUnavailable(f"board {method}: no answer within {CALL_TIMEOUT_S:.0f} s") from None
        except Exception as exc:
            self._board = None
            if isinstance(exc, _ray_actor_errors()):
                raise BoardUnavailable(f"board {method}: {type(exc).__name__}: {exc}") from exc
            raise

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keepalive())

    async def _keepalive(self) -> None:
        while True:
            try:
                await self._call("keepalive", self.posted)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("placement board keepalive failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(KEEPALIVE_S)

    async def experts(self) -> dict[str, Any]:
        """The body of GET /admin/v1/experts (contracts section 7)."""
        view = await self._call("view")
        layers, experts = self.shape
        out = {}
        for pool in self.pools:
            v = view.get(pool) or {}
            total = [[0] * experts for _ in range(layers)]
            replicas = v.get("replicas", [])
            for r in replicas:
                _add(total, r["expertTokens"])
            pid = v.get("placementId")
            out[pool] = {"placementId": pid or INITIAL_ID,
                         "placement": v.get("placement") if pid else self.initial_by_pool.get(pool, self.initial),
                         "expertTokens": total, "replicas": replicas}
        return {"pools": out}

    async def post(self, pool: str, doc: dict[str, Any]) -> str:
        """Make ``doc`` (validated by the caller) the pool's desired placement; returns its id.

        Raises PlacementSuperseded when the board holds a placement posted later (another ingress): answering
        with our id would have the caller wait for replicas that never move to it."""
        pid = placement_id(doc)
        entry = {"placementId": pid, "placement": doc, "at": time.time()}
        if not await self._call("set_desired", pool, pid, doc, entry["at"]):
            desired = (await self._call("view")).get(pool, {}).get("placementId")
            if desired != pid:  # the same placement posted later elsewhere is ours too
                raise PlacementSuperseded(pool, desired)
            return pid
        self.posted[pool] = entry  # only once the board has it: a failed post is not replayed by the keepalive
        return pid

    async def ready(self) -> dict[str, int]:
        """{pool: replicas reporting within LIVE_S} for every pool of the app (0 for one without reports)."""
        counts = await self._call("ready")
        return {pool: int(counts.get(pool, 0)) for pool in self.pools}
