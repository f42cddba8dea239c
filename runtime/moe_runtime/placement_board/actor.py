"""``PlacementBoard``, the actor around ``BoardState``, and ``get_board``, which finds or creates it."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .state import BOARD_NAMESPACE, IDLE_EXIT_S, BoardState, board_name

log = logging.getLogger("moe_runtime.placement_board")


class PlacementBoard:
    """The board actor (wrapped by ``ray.remote`` in ``get_board``). Async, so that its idle watchdog can run."""

    def __init__(self, idle_exit_s: float = IDLE_EXIT_S):
        self.state = BoardState()
        self.idle_exit_s = idle_exit_s
        self.last_call = time.monotonic()
        self.started_at = time.time()  # wall clock; a restarted board has a new one
        self._watchdog: asyncio.Task | None = None

    def _touch(self) -> float:
        self.last_call = now = time.monotonic()
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_idle())
        return now

    async def _watch_idle(self) -> None:
        import ray

        while time.monotonic() - self.last_call < self.idle_exit_s:
            await asyncio.sleep(min(5.0, self.idle_exit_s))
        log.info("placement board idle for %.0f s: exiting", self.idle_exit_s)
        ray.actor.exit_actor()

    async def started(self) -> float:
        """When this board instance started (wall clock, seconds): tells a restart apart."""
        self._touch()
        return self.started_at

    async def report(self, key: str, pool: str, info: dict[str, Any]) -> dict[str, Any]:
        return self.state.report(key, pool, info, self._touch())

    async def set_desired(self, key: str, pool: str, pid: str, doc: dict[str, Any] | None, at: float) -> bool:
        return self.state.set_desired(key, pool, pid, doc, at, self._touch())

    async def keepalive(self, key: str, posted: dict[str, dict[str, Any]]) -> dict[str, str | None]:
        return self.state.keepalive(key, posted, self._touch())

    async def view(self, key: str) -> dict[str, dict[str, Any]]:
        return self.state.view(key, self._touch())

    async def ready(self, key: str) -> dict[str, int]:
        return self.state.ready(key, self._touch())


def get_board(app: str):
    """The board actor of Serve application ``app``, created on first use by whichever replica asks first.

    Detached: a board owned by the replica that happened to create it would die with that replica. Ray restarts it
    when its process dies (its state is rebuilt from reports and the ingress's keepalives); it exits by itself once
    nothing has called it for ``IDLE_EXIT_S`` (the application was deleted).
    """
    import ray

    actor = ray.remote(PlacementBoard).options(
        name=board_name(app), namespace=BOARD_NAMESPACE, get_if_exists=True, lifetime="detached",
        num_cpus=0, max_restarts=-1, max_concurrency=1000)
    try:
        return actor.remote()
    except ValueError:  # lost a creation race with another replica
        return ray.get_actor(board_name(app), namespace=BOARD_NAMESPACE)
