"""The operator's own periodic loops (autoscaler, rebalancer) on one LIST of MoEDeployments per step.

Not kopf timers: a timer puts a finalizer on every object. One asyncio loop every ``STEP_S`` seconds asks the
leader check once, LISTs the watched MoEDeployments once, and hands the list to each registered consumer's
``tick_due(now, bodies)`` in its own thread; a consumer still busy with the previous step (a slow runtime, a
10 s HTTP timeout) is skipped for this step, so it never holds up the others. ``run_due`` is the common "which
objects are due" walk each consumer calls with its own state table; it ticks each object in its own thread of a
pool per consumer, so one object's slow or hung tick holds up no other object (issue 14 item 7).

Liveness: ``health()`` (kopf's /healthz probe) fails when the step loop has not stepped, or a consumer or an
object's tick has run, for ``STALL_S`` seconds: every call a tick makes is bounded (Kubernetes API timeouts in
kube.py, deadlines in boundedhttp.py), so a tick that old is stuck, and a restart is the cure.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, MutableMapping

import kopf

from . import kube, leader, metrics
from .config import CONFIG

log = logging.getLogger(__name__)
STEP_S = 2.0   # seconds between LISTs; the shortest interval served (autoscaling) is 5 s, rebalancing 10 s
TICK_WORKERS = 16   # threads per consumer ticking objects side by side (kube.POOL_SIZE counts them)
WAIT_S = 1.0        # run_due waits this long for the ticks it started; slower ones finish in the background
STALL_S = 600.0     # a step loop silent, or a tick running, this long fails the liveness probe


@dataclass
class Consumer:
    name: str
    tick_due: Callable[[float, list[dict[str, Any]]], int]   # (now in Unix seconds, the listed objects) -> ticks run
    task: asyncio.Task | None = None
    busy_since: float | None = None   # time.monotonic() when its running tick_due began


_POOLS: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
_INFLIGHT: dict[
    tuple[str, tuple[str, str]], tuple[concurrent.futures.Future, list]
] = {}  # (what, key) -> (tick, [time.monotonic() it began running; None while it waits for a worker])
_LOCK = threading.Lock()
LAST_STEP: float | None = None    # time.monotonic() of the step loop's last turn (None: not started)


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
    with _LOCK:
        pool = _POOLS.get(what)
        if pool is None:
            pool = _POOLS[what] = concurrent.futures.ThreadPoolExecutor(TICK_WORKERS, thread_name_prefix=what)
    started, seen = [], set()
    for body in bodies:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        seen.add(key)
        if meta.get("deletionTimestamp") or not enabled(body):
            continue
        st = states.get(key)
        if st is not None and now < st.next_at:
            continue
        running = _INFLIGHT.get((what, key))
        if running is not None and not running[0].done():
            continue   # its previous tick is still running: it alone waits
        began: list = [None]
        fut = pool.submit(_tick_one, tick, body, now, key, states, new_state, retry_s, what, began)
        _INFLIGHT[(what, key)] = (fut, began)
        started.append(fut)
    done, _ = concurrent.futures.wait(started, timeout=WAIT_S)
    for key in set(states) - seen:
        states.pop(key, None)
    for k in [k for k, (f, _) in list(_INFLIGHT.items()) if k[0] == what and k[1] not in seen and f.done()]:
        _INFLIGHT.pop(k, None)
        metrics.forget(*k[1])   # gone from the list: a tick that outlived its delete handler may have set series again
    return sum(1 for f in done if f.result())


def _tick_one(tick, body, now, key, states, new_state, retry_s: float, what: str, began: list) -> bool:
    began[0] = time.monotonic()   # liveness counts the running time, not the wait for a worker
    try:
        tick(body, now)
        return True
    except Exception:  # noqa: BLE001 - one bad object must not stop the others
        states.setdefault(key, new_state()).next_at = now + retry_s
        metrics.ERRORS.labels(*key).inc()
        log.exception("%s tick of %s/%s failed", what, *key)
        return False


def health(now: float | None = None) -> str | None:
    """Why the periodic loops look stuck (None: they do not): the step loop silent, a consumer's step or an
    object's tick running, for over ``STALL_S`` seconds (``now``: time.monotonic())."""
    now = time.monotonic() if now is None else now
    if LAST_STEP is not None and now - LAST_STEP > STALL_S:
        return f"the periodic loop has not stepped for {now - LAST_STEP:.0f} s (a Kubernetes call hangs?)"
    for c in CONSUMERS:
        if c.busy_since is not None and now - c.busy_since > STALL_S:
            return f"the {c.name} step has been running for {now - c.busy_since:.0f} s"
    for (what, (ns, name)), (fut, began) in list(_INFLIGHT.items()):
        start = began[0]
        if not fut.done() and start is not None and now - start > STALL_S:
            return f"the {what} tick of {ns}/{name} has been running for {now - start:.0f} s"
    return None


async def _run(consumer: Consumer, now: float, bodies: list[dict[str, Any]]) -> None:
    consumer.busy_since = time.monotonic()
    try:
        await asyncio.to_thread(consumer.tick_due, now, bodies)
    except Exception:  # noqa: BLE001
        log.exception("%s loop failed", consumer.name)
    finally:
        consumer.busy_since = None


async def _loop() -> None:
    global LAST_STEP
    while True:
        LAST_STEP = time.monotonic()
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


@kopf.on.probe(id="periodic_loops")
def probe(**_) -> str:
    """kopf's /healthz answers 500 while ``health()`` finds a loop stuck (PermanentError: no retry inside the probe)."""
    problem = health()
    if problem:
        raise kopf.PermanentError(problem)
    return "ok"
