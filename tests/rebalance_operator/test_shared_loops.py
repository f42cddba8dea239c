"""handlers/loops.py: the autoscaler and the rebalancer share one LIST of MoEDeployments per step, a consumer
still busy is skipped without holding up the other, and a failing tick is counted and retried later."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from moe_operator.handlers import kube, leader, loops, metrics


def body(name, **spec):
    return {"metadata": {"namespace": "ns", "name": name}, "spec": spec}


@pytest.mark.timing_sensitive
def test_one_list_per_step_and_a_slow_consumer_does_not_hold_up_the_other(monkeypatch):
    steps, lists, fast, slow, release = [], [], [], [], threading.Event()
    monkeypatch.setattr(loops, "STEP_S", 0.05)
    monkeypatch.setattr(leader, "is_active", lambda: steps.append(1) or True)   # asked once per step
    monkeypatch.setattr(kube, "list_moeds", lambda namespaces: lists.append(1) or [body(f"m{len(lists)}")])

    def slow_tick(now, bodies):
        slow.append(bodies)
        release.wait(60)   # busy until the test is done looking (60 s: only so a broken loop cannot hang it)

    monkeypatch.setattr(loops, "CONSUMERS", [loops.Consumer("fast", lambda now, bodies: fast.append(bodies)),
                                             loops.Consumer("slow", slow_tick)])

    async def run():
        task = asyncio.get_running_loop().create_task(loops._loop())
        deadline = time.monotonic() + 30
        while len(fast) < 5 and time.monotonic() < deadline:   # five steps of fast while slow is still busy
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        release.set()   # only now: a slow consumer done before the loop stopped could be ticked again

    asyncio.run(run())
    assert len(fast) >= 5 and len(slow) == 1, (len(fast), len(slow))   # slow was busy: skipped, fast went on
    assert len(lists) in (len(steps), len(steps) - 1)                    # one LIST per step for both (the last
    names = [b[0]["metadata"]["name"] for b in fast]                     # step may be cancelled before its LIST)
    assert len(set(names)) == len(names)                                 # each of fast's ticks on a fresh LIST
    assert slow[0] is fast[0]                                            # the same listed objects


def test_run_due_skips_deleted_disabled_and_not_due_counts_failures_and_forgets(monkeypatch):
    monkeypatch.setattr(loops, "WAIT_S", 30.0)   # run_due returns once the ticks are done; a loaded CI is slow

    class St:
        next_at = 0.0

    states, ticked = {}, []

    def tick(b, now):
        ticked.append(b["metadata"]["name"])
        if b["metadata"]["name"] == "bad":
            raise RuntimeError("boom")
        states.setdefault(("ns", b["metadata"]["name"]), St()).next_at = now + 10

    gone = body("gone", on=True)
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    bodies = [body("a", on=True), body("off", on=False), gone, body("bad", on=True)]
    errors = metrics.ERRORS.labels("ns", "bad")
    before = errors._value.get()
    kw = dict(enabled=lambda b: b["spec"]["on"], tick=tick, new_state=St, retry_s=5.0, what="t")
    assert loops.run_due(bodies, states, now=0.0, **kw) == 1
    assert sorted(ticked) == ["a", "bad"] and errors._value.get() == before + 1   # (ticked in parallel)
    assert states[("ns", "bad")].next_at == 5.0
    assert loops.run_due(bodies, states, now=4.0, **kw) == 0 and ticked == ["a", "bad"]   # nothing due
    assert loops.run_due(bodies[:1], states, now=4.0, **kw) == 0 and set(states) == {("ns", "a")}


@pytest.mark.parametrize("name", ["autoscaler", "rebalancer"])
def test_both_loops_are_registered(name):
    import moe_operator.handlers  # noqa: F401

    assert [c.name for c in loops.CONSUMERS].count(name) == 1


def test_one_objects_hung_tick_does_not_hold_up_the_others():
    """Issue 14 item 7: objects are ticked each in its own thread. A tick that hangs (here until the test lets it
    go) holds up only its own object: run_due returns, the others are ticked, and the hung one is not ticked again
    while it is still running."""
    from slow_http import call_in_thread

    class St:
        next_at = 0.0

    release, ticked = threading.Event(), []

    def tick(b, now):
        ticked.append(b["metadata"]["name"])
        if b["metadata"]["name"] == "hung":
            release.wait(60)   # 60 s: only so a broken loop cannot hang the test
        states.setdefault(("ns", b["metadata"]["name"]), St()).next_at = now + 1

    states = {}
    bodies = [body("hung", on=True), body("b", on=True), body("c", on=True)]
    kw = dict(enabled=lambda b: True, tick=tick, new_state=St, retry_s=5.0, what="isolation-test")
    try:
        returned, n, _ = call_in_thread(lambda: loops.run_due(bodies, states, now=0.0, **kw), 20.0)
        assert returned, "run_due waited for the hung tick"
        deadline = time.monotonic() + 20
        while not {"b", "c"} <= set(ticked) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert {"b", "c"} <= set(ticked), ticked
        returned, n, _ = call_in_thread(lambda: loops.run_due(bodies, states, now=2.0, **kw), 20.0)
        assert returned
        deadline = time.monotonic() + 20
        while ticked.count("b") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ticked.count("b") == 2 and ticked.count("c") == 2 and ticked.count("hung") == 1, ticked
    finally:
        release.set()


def test_a_tick_waiting_in_the_queue_is_not_a_stuck_tick(monkeypatch):
    """Liveness must count a tick's running time, not its wait for a worker (review): with many objects and slow
    dependencies the queue alone outlasts STALL_S, and a restart loop then follows exactly when a dependency is down."""
    monkeypatch.setattr(loops, "TICK_WORKERS", 1)
    monkeypatch.setattr(loops, "STALL_S", 1.0)
    monkeypatch.setattr(loops, "_INFLIGHT", {})        # only this test's ticks (an earlier test's hung one stays)
    monkeypatch.setattr(loops, "CONSUMERS", [])
    monkeypatch.setattr(loops, "LAST_STEP", None)
    monkeypatch.setattr(loops, "WAIT_S", 0.0)
    bodies = [{"metadata": {"namespace": "ns", "name": f"d{i}"}} for i in range(30)]
    states: dict = {}

    class St:
        next_at = 0.0

    loops.run_due(bodies, states, enabled=lambda b: True, tick=lambda body, now: time.sleep(0.1), new_state=St,
                  retry_s=5.0, what="queue-test", now=0.0)
    reports = []
    end = time.monotonic() + 3.5
    while time.monotonic() < end:
        reports.append(loops.health())
        time.sleep(0.1)
    loops._POOLS.pop("queue-test").shutdown(wait=True)
    assert [r for r in reports if r] == [], [r for r in reports if r][:3]


def test_series_a_tick_sets_after_its_object_was_deleted_go_with_the_next_step(monkeypatch):
    """The delete handler forgets an object's series, but a tick still running then sets them again (review): the
    first step that no longer lists the object, once that tick is done, removes them."""
    monkeypatch.setattr(loops, "WAIT_S", 30.0)
    monkeypatch.setattr(loops, "_INFLIGHT", {})

    class St:
        next_at = 0.0

    def tick(b, now):
        metrics.STALE.labels("ns", "late").set(1)
    kw = dict(enabled=lambda b: True, tick=tick, new_state=St, retry_s=5.0, what="forget-test")
    loops.run_due([body("late", on=True)], {}, now=0.0, **kw)
    assert metrics.STALE.labels("ns", "late")._value.get() == 1
    metrics.forget("ns", "late")                       # on_delete ran, then (here: before) the tick's write
    metrics.STALE.labels("ns", "late").set(1)          # the tick that outlived it
    loops.run_due([], {}, now=1.0, **kw)
    names = {tuple(s.labels.values()) for fam in metrics.STALE.collect() for s in fam.samples}
    assert ("ns", "late") not in names
