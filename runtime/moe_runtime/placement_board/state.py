"""The board's contract constants and ids, and ``BoardState``: its bookkeeping, pure (callers pass ``now``)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

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
