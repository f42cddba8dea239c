"""The operator's own periodic loops (autoscaler, rebalancer) on one LIST of MoEDeployments per step.

Not kopf timers: a timer puts a finalizer on every object. One asyncio loop every ``STEP_S`` seconds asks the
leader check once, LISTs the watched MoEDeployments once, and hands the list to each registered consumer's
``tick_due(now, bodies)`` in its own thread; a consumer still busy with the previous step (a slow runtime, a
10 s HTTP timeout) is skipped for this step, so it never holds up the others. ``run_due`` is the common "which
objects are due" walk each consumer calls with its own state table.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, MutableMapping

import kopf

from . import kube, leader, metrics
from .config import CONFIG

log = logging.getLogger(__name__)
STEP_S = 2.0   # seconds between LISTs; the shortest interval served (autoscaling) is 5 s, rebalancing 10 s


@dataclass
class Consumer:
    name: str
    tick_due: Callable[[float, list[dict[str, Any]]], int]   # (now in Unix seconds, the listed objects) -> ticks run
    task: asyncio.Task | None = None


CONSUMERS: list[Consumer] = []


def register(name: str, tick_due: Callable[[float, list[dict[str, Any]]], int]) -> None:
    """Add a consumer of the shared list (called once at import by handlers/autoscale.py and rebalance.py)."""
    CONSUMERS.append(Consumer(name, tick_due))


def begin_tick(body: dict[str, Any], states: MutableMapping[tuple[str, str], Any], new_state: Callable[[], Any]):
    """The common start of a consumer's tick: (namespace, name, its state, the validated MoEDeployment), or None
    when the spec does not validate (the reconcile reports that, not the periodic loops)."""
    from moe_operator.api import MoEDeployment

    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    state = states.setdefault((ns, name), new_state())
    try:
        return ns, name, state, MoEDeployment.model_validate(body)
    except Exception:  # noqa: BLE001 - an invalid spec is the reconcile's to report
        return None


def run_due(bodies: list[dict[str, Any]], states: MutableMapping[tuple[str, str], Any], *,
            enabled: Callable[[dict[str, Any]], bool], tick: Callable[[dict[str, Any], float], Any],
            new_state: Callable[[], Any], retry_s: float, what: str, now: float) -> int:
    """Tick every object of ``bodies`` that is not being deleted, is ``enabled``, and whose state's ``next_at``
    (Unix seconds) has passed; returns how many were ticked. A failing tick is logged, counted in
    ``moe_operator_reconcile_errors_total`` and retried ``retry_s`` seconds later; one bad object never stops the
    others. States of objects no longer listed are forgotten."""
    n, seen = 0, set()
    for body in bodies:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        seen.add(key)
        if meta.get("deletionTimestamp") or not enabled(body):
            continue
        st = states.get(key)
        if st is not None and now < st.next_at:
            continue
        try:
            tick(body, now)
            n += 1
        except Exception:  # noqa: BLE001 - one bad object must not stop the others
            states.setdefault(key, new_state()).next_at = now + retry_s
            metrics.ERRORS.labels(*key).inc()
            log.exception("%s tick of %s/%s failed", what, *key)
    for key in set(states) - seen:
        states.pop(key, None)
    return n


async def _run(consumer: Consumer, now: float, bodies: list[dict[str, Any]]) -> None:
    try:
        await asyncio.to_thread(consumer.tick_due, now, bodies)
    except Exception:  # noqa: BLE001
        log.exception("%s loop failed", consumer.name)


async def _loop() -> None:
    while True:
        await asyncio.sleep(STEP_S)
        try:
            if not await asyncio.to_thread(leader.is_active):
                continue
            bodies = await asyncio.to_thread(kube.list_moeds, CONFIG.namespaces)
        except Exception:  # noqa: BLE001
            log.exception("listing MoEDeployments for the periodic loops failed")
            continue
        now = time.time()
        for c in CONSUMERS:
            if c.task is None or c.task.done():
                c.task = asyncio.get_running_loop().create_task(_run(c, now, bodies))


@kopf.on.startup()
async def start_loops(**_) -> None:
    asyncio.get_running_loop().create_task(_loop())
