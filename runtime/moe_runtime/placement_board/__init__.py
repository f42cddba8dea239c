"""The placement board: one Ray actor per Serve application that the engine replicas report to and read their pool's
desired expert placement from (docs/contracts.md section 7, docs/runtime.md "Live placement").

Why an actor: a Serve handle call reaches ONE replica, so the ingress cannot address every replica of a pool.
Instead each engine replica reports about once a second (replica id, cumulative per-expert tokens, the id of the
placement it runs) and gets the pool's desired placement back; it applies it between steps when the ids differ.
Replicas started later by autoscaling converge the same way.

Parts, each a module, usable on its own:
- ``state``: the contract's constants and ids, and ``BoardState``, the board's bookkeeping, pure (no Ray, no clock
  of its own: callers pass ``now``).
- ``actor``: ``PlacementBoard``, the actor around it (named ``moe-placement-board-<app>``, detached,
  ``num_cpus=0``, restarted by Ray when its process dies, exits by itself after ``IDLE_EXIT_S`` without any call,
  i.e. once the app is gone).
- ``reporter``: ``BoardReporter`` (engine replica side); ``client``: ``BoardClient`` (ingress side).

State is keyed by ``(key, pool)`` where ``key`` hashes the application's RuntimeConfig: a redeploy with another
config (another model, another rendered placement) starts from its own "initial" instead of inheriting a desired
placement made for the old one.
"""
from __future__ import annotations

from .actor import PlacementBoard, get_board
from .client import BoardClient, BoardUnavailable, PlacementSuperseded
from .reporter import BoardReporter
from .state import (APPLY_BACKOFF_S, BOARD_NAMESPACE, BOARD_PREFIX, CALL_TIMEOUT_S, GENERATION_TTL_S, IDLE_EXIT_S,
                    INITIAL_ID, KEEPALIVE_S, LIVE_S, REPORT_PERIOD_S, SLOW_APPLY_S, BoardState, board_name,
                    canonical_placement, config_key, placement_id)

__all__ = ["APPLY_BACKOFF_S", "BOARD_NAMESPACE", "BOARD_PREFIX", "CALL_TIMEOUT_S", "GENERATION_TTL_S", "IDLE_EXIT_S",
           "INITIAL_ID", "KEEPALIVE_S", "LIVE_S", "REPORT_PERIOD_S", "SLOW_APPLY_S", "BoardClient", "BoardReporter",
           "BoardState", "BoardUnavailable", "PlacementBoard", "PlacementSuperseded", "board_name",
           "canonical_placement", "config_key", "get_board", "placement_id"]
