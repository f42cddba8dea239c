"""``BoardReporter``: an engine replica's side of the board (report, apply the desired placement, retry)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .state import APPLY_BACKOFF_S, CALL_TIMEOUT_S, INITIAL_ID, REPORT_PERIOD_S, SLOW_APPLY_S, _add

log = logging.getLogger("moe_runtime.placement_board")


class BoardReporter:
    """An engine replica's side: report every ``period_s``, apply the desired placement when it differs.

    ``engine`` needs ``expert_load()`` (per-expert token deltas) and ``async apply_placement(doc)``; ``board``
    is a callable returning the board actor handle (called again after a failed call, so that a board that exited
    or restarted is found anew). A failed apply is logged, reported (``error``) and retried after 1, 2, 4 .. 30 s;
    nothing here raises into the replica.
    """

    def __init__(self, engine, pool: str, replica: str, key: str, board: Callable[[], Any],
                 initial: dict[str, Any] | None, period_s: float = REPORT_PERIOD_S):
        self.engine, self.pool, self.replica, self.key = engine, pool, replica, key
        self._get_board, self._board = board, None
        self.period_s = period_s
        self.running_id, self.running = INITIAL_ID, initial
        self.cumulative: list[list[int]] = []
        self.error: str | None = None
        self._send_placement = False
        self._apply_task: asyncio.Task | None = None
        self._apply_started = (None, 0.0)  # (placement id, monotonic start) of the apply in progress
        self._failed_id: str | None = None
        self._retry_at = 0.0
        self._backoff = APPLY_BACKOFF_S[0]
        self._task: asyncio.Task | None = None
        self._last_warning = 0.0

    def collect(self) -> list[list[int]]:
        """Cumulative tokens per [moe_layer][expert] since this replica started (sums of ``expert_load`` deltas)."""
        _add(self.cumulative, self.engine.expert_load())
        return self.cumulative

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        for t in (self._task, self._apply_task):
            if t is not None and not t.done():
                t.cancel()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # board gone or restarting: find it again next time
                self._board = None
                if time.monotonic() - self._last_warning > 30:
                    self._last_warning = time.monotonic()
                    log.warning("placement board report failed (will retry every %.0f s): %s: %s",
                                self.period_s, type(exc).__name__, exc)
            await asyncio.sleep(self.period_s)

    async def tick(self) -> dict[str, Any]:
        """One report; starts an apply when the board's desired placement differs from the running one."""
        error = self.error
        pid, started = self._apply_started
        if self._apply_task is not None and not self._apply_task.done() and time.monotonic() - started > SLOW_APPLY_S:
            error = f"applying {pid}: still loading after {time.monotonic() - started:.0f} s"
        info: dict[str, Any] = {"replica": self.replica, "placementId": self.running_id,
                                "expertTokens": self.collect(), "error": error}
        if self._send_placement:
            info["placement"] = self.running
        if self._board is None:
            self._board = self._get_board()
        reply = await asyncio.wait_for(self._board.report.remote(self.key, self.pool, info), CALL_TIMEOUT_S)
        self._send_placement = bool(reply.get("needPlacement"))
        want, doc = reply.get("placementId"), reply.get("placement")
        if want == self.running_id:  # e.g. the failing placement was replaced by the one this replica runs
            self.error, self._failed_id = None, None
        elif want is not None and doc is not None:
            self._maybe_apply(want, doc)
        return reply

    def _maybe_apply(self, pid: str, doc: dict[str, Any]) -> None:
        if self._apply_task is not None and not self._apply_task.done():
            return  # one move at a time; the next report after it ends sees the newest desired placement
        if pid == self._failed_id and time.monotonic() < self._retry_at:
            return
        if pid != self._failed_id:
            self._backoff = APPLY_BACKOFF_S[0]
        self._apply_started = (pid, time.monotonic())
        self._apply_task = asyncio.get_running_loop().create_task(self._apply(pid, doc))

    async def _apply(self, pid: str, doc: dict[str, Any]) -> None:
        try:
            info = await self.engine.apply_placement(doc)
        except Exception as exc:  # noqa: BLE001 (logged, reported and retried; the replica keeps serving)
            self.error = f"applying {pid}: {type(exc).__name__}: {exc}"
            self._failed_id, self._retry_at = pid, time.monotonic() + self._backoff
            log.warning("%s; retrying in %.0f s", self.error, self._backoff)
            self._backoff = min(2 * self._backoff, APPLY_BACKOFF_S[1])
            return
        self.running_id, self.running, self.error, self._failed_id = pid, doc, None, None
        log.info("placement %s applied on %s: %s", pid, self.replica, info)
