"""observe -> ready -> decide: the part of a tick that the operator (handlers/autoscale.py) and ``moectl up``
(local_loop.py) share. What differs stays with them: where ready replicas come from, how a decision is applied,
and what is reported. Pure but for ``source.observe()``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Sequence

from .model import PoolModel, Settings
from .observation import Observation
from .policy import Decision, History, decide


def observe_and_decide(source, pools: Sequence[PoolModel], settings: Settings, history: History, now: float,
                       ready: Callable[[Mapping[str, int]], Mapping[str, int] | None],
                       no_source: str | None = None) -> tuple[Observation | None, Decision]:
    """One observation (None: no source, or it failed) with its ready replicas replaced by ``ready(seen)`` (``seen``:
    what the metrics said; None from it keeps them), then ``decide``. A held decision says why: the source's
    ``last_error``, or ``no_source`` when there is no source."""
    obs = source.observe() if source is not None else None
    if obs is not None:
        counted = ready(obs.ready)
        if counted is not None:
            obs = replace(obs, ready={p.name: int(counted.get(p.name, 0)) for p in pools})
    d = decide(obs, pools, settings, history, now)
    why = getattr(source, "last_error", None) if source is not None else no_source
    if d.held and why:
        d = replace(d, reasons=[*d.reasons, str(why)])
    return obs, d
