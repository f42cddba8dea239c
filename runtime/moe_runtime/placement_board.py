"""The placement board: one Ray actor per Serve application that the engine replicas report to and read their pool's
desired expert placement from (docs/contracts.md section 7, docs/runtime.md "Live placement").

Why an actor: a Serve handle call reaches ONE replica, so the ingress cannot address every replica of a pool.
Instead each engine replica reports about once a second (replica id, cumulative per-expert tokens, the id of the
placement it runs) and gets the pool's desired placement back; it applies it between steps when the ids differ.
Replicas started later by autoscaling converge the same way.

Three parts, each usable on its own:
- ``BoardState``: the board's bookkeeping, pure (no Ray, no clock of its own: callers pass ``now``).
- ``PlacementBoard``: the actor around it (named ``moe-placement-board-<app>``, detached, ``num_cpus=0``, restarted
  by Ray when its process dies, exits by itself after ``IDLE_EXIT_S`` without any call, i.e. once the app is gone).
- ``BoardReporter`` (engine replica side) and ``BoardClient`` (ingress side).

State is keyed by ``(key, pool)`` where ``key`` hashes the application's RuntimeConfig: a redeploy with another
config (another model, another rendered placement) starts from its own "initial" instead of inheriting a desired
placement made for the old one.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("moe_runtime.placement_board")

INITIAL_ID = "initial"  # id of the rendered placement (RuntimeConfig.placement)
BOARD_PREFIX = "moe-placement-board-"
BOARD_NAMESPACE = "serve"  # Ray namespace of the board actor (the one Serve's own actors live in)
REPORT_PERIOD_S = 1.0  # seconds between two reports of one engine replica
LIVE_S = 10.0  # a replica silent this long is dropped from the view, the sums and moe_ready_replicas
KEEPALIVE_S = 5.0  # seconds between two ingress keepalives (they carry the desired placements the ingress posted)
IDLE_EXIT_S = 120.0  # the board exits after this long without any call (the app was deleted)
GENERATION_TTL_S = 600.0  # state of a config key nobody mentioned for this long is forgotten
APPLY_BACKOFF_S = (1.0, 30.0)  # first and longest wait before retrying a failed apply, seconds
CALL_TIMEOUT_S = 10.0  # a board call slower than this counts as failed (the board is looked up again), seconds
SLOW_APPLY_S = 30.0  # an apply running longer than this is shown in the replica's report (``error``)


def board_name(app: str) -> str:
    """Name of the board actor of Serve application ``app``."""
    return BOARD_PREFIX + app


def canonical_placement(doc: Any, model: tuple[int, int] | None = None) -> dict[str, Any]:
    """The placement JSON normalised (defaults filled, validated): raises ValueError when it is malformed.

    With ``model`` = (MoE layers, experts) of the served model, every dimension is first checked against it by
    counting (``experts.placement.check_shape``), before anything is built from the document."""
    from pydantic import ValidationError

    from moe_runtime.config import Placement
    from moe_runtime.experts.placement import check_shape

    if model is not None:
        check_shape(doc, *model)
    try:
        return Placement.model_validate(doc).to_json()
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"placement.{where}: {msg}" if where else msg) from None


def placement_id(doc: dict[str, Any]) -> str:
    """Content hash of a placement: ``p-`` + 16 hex digits of sha256 over its canonical JSON."""
    text = json.dumps(canonical_placement(doc), sort_keys=True, separators=(",", ":"))
    return "p-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def config_key(config: dict[str, Any]) -> str:
    """Hash of an application's RuntimeConfig (JSON form), 16 hex digits: the board's generation key."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _add(total: list[list[int]], rows: list[list[int]]) -> None:
    for li, row in enumerate(rows):
        while len(total) <= li:
            total.append([])
        acc = total[li]
        acc.extend([0] * (len(row) - len(acc)))
        for e, v in enumerate(row):
            acc[e] += int(v)


@dataclass
class _Replica:
    placement_id: str
    expert_tokens: list[list[int]]
    seen: float  # board clock, seconds
    error: str | None = None


@dataclass
class _Pool:
    desired_id: str | None = None  # None: not known yet (a fresh board before any report or post)
    desired: dict[str, Any] | None = None
    desired_at: float = 0.0  # wall-clock time of the post (0 = adopted from a replica's report)
    replicas: dict[str, _Replica] = field(default_factory=dict)


class BoardState:
    """Desired placement and replica reports per (config key, pool). Times are the caller's clock, in seconds."""

    def __init__(self, live_s: float = LIVE_S, generation_ttl_s: float = GENERATION_TTL_S):
        self.live_s, self.generation_ttl_s = live_s, generation_ttl_s
        self.pools: dict[tuple[str, str], _Pool] = {}
        self.touched: dict[str, float] = {}

    def _pool(self, key: str, pool: str, now: float) -> _Pool:
        self.touched[key] = now
        for k in [k for k, t in self.touched.items() if now - t > self.generation_ttl_s]:
            del self.touched[k]
            for p in [p for p in self.pools if p[0] == k]:
                del self.pools[p]
        return self.pools.setdefault((key, pool), _Pool())

    def _prune(self, p: _Pool, now: float) -> None:
        for r in [r for r, rep in p.replicas.items() if now - rep.seen > self.live_s]:
            del p.replicas[r]

    def report(self, key: str, pool: str, info: dict[str, Any], now: float) -> dict[str, Any]:
        """An engine replica's report: ``info`` = {replica, placementId, expertTokens, error?, placement?}.

        ``placement`` (the doc the replica runs, possibly null) is sent only when the previous answer asked for it
        (``needPlacement``): a board that knows no desired placement for the pool adopts the reporter's.
        Answer: {placementId: desired id or None, placement: the desired doc when it differs from the reporter's,
        needPlacement: bool}.
        """
        p = self._pool(key, pool, now)
        running = str(info["placementId"])
        p.replicas[str(info["replica"])] = _Replica(running, info.get("expertTokens") or [], now, info.get("error"))
        if p.desired_id is None and "placement" in info:
            p.desired_id, p.desired, p.desired_at = running, info["placement"], 0.0
        if p.desired_id is None:
            return {"placementId": None, "placement": None, "needPlacement": True}
        differs = p.desired_id != running
        return {"placementId": p.desired_id, "placement": p.desired if differs else None, "needPlacement": False}

    def set_desired(self, key: str, pool: str, pid: str, doc: dict[str, Any] | None, at: float, now: float) -> bool:
        """Make (pid, doc) the pool's desired placement unless the board holds one posted later (``at``, wall
        clock). Returns whether it was taken."""
        p = self._pool(key, pool, now)
        if p.desired_id is not None and p.desired_at > at:
            return False
        p.desired_id, p.desired, p.desired_at = pid, doc, at
        return True

    def keepalive(self, key: str, posted: dict[str, dict[str, Any]], now: float) -> dict[str, str | None]:
        """The ingress's keepalive: ``posted`` = {pool: {placementId, placement, at}} it accepted; restores any the
        board lost (a restart) unless it holds a later one. Returns {pool: desired id} for every known pool."""
        self.touched[key] = now
        for pool, d in posted.items():
            p = self._pool(key, pool, now)
            if p.desired_id != d["placementId"] and d["at"] > p.desired_at:
                p.desired_id, p.desired, p.desired_at = d["placementId"], d["placement"], d["at"]
        return {pool: p.desired_id for (k, pool), p in self.pools.items() if k == key}

    def view(self, key: str, now: float) -> dict[str, dict[str, Any]]:
        """{pool: {placementId, placement, replicas: [{replica, placementId, expertTokens, lastReportAge, error}]}}
        for the pools of ``key`` the board knows; replicas silent for ``live_s`` are dropped."""
        self.touched[key] = now
        out = {}
        for (k, pool), p in self.pools.items():
            if k != key:
                continue
            self._prune(p, now)
            out[pool] = {"placementId": p.desired_id, "placement": p.desired, "replicas": [
                {"replica": r, "placementId": rep.placement_id, "expertTokens": rep.expert_tokens,
                 "lastReportAge": round(now - rep.seen, 3), "error": rep.error}
                for r, rep in sorted(p.replicas.items())]}
        return out

    def ready(self, key: str, now: float) -> dict[str, int]:
        """{pool: replicas that reported within ``live_s``}."""
        return {pool: len(v["replicas"]) for pool, v in self.view(key, now).items()}


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
