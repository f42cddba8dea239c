"""The drift sweep as a consumer of the shared step loop (handlers/drift_sweep.py on handlers/loops.py): an object is
first checked one interval after it is first listed, then once per interval; a failing one is retried and holds up
no other; a hung one fails the liveness probe."""
from __future__ import annotations

import threading
import time

import pytest

from moe_operator.handlers import drift_sweep, loops
from moe_operator.handlers.config import CONFIG


def body(name: str) -> dict:
    return {"metadata": {"namespace": "ns", "name": name}, "spec": {}}


@pytest.fixture
def sweep(monkeypatch):
    checked: list[str] = []
    monkeypatch.setattr(CONFIG, "drift_interval_seconds", 30.0)
    monkeypatch.setattr(drift_sweep, "STATES", {})
    monkeypatch.setattr(drift_sweep, "apply_outcome", lambda b, outcome: None)

    def reconcile(b, strict):
        assert strict is False   # the sweep leaves the autoscaler's sizes alone
        if b["metadata"]["name"] == "bad":
            raise RuntimeError("API error")
        checked.append(b["metadata"]["name"])

    monkeypatch.setattr(drift_sweep, "reconcile", reconcile)
    return checked


def test_each_object_is_checked_once_per_interval_starting_one_interval_after_it_is_listed(sweep):
    objs = [body("a"), body("bad"), body("b")]
    assert drift_sweep.tick_due(1000.0, objs) == 0 and sweep == []   # the resume handler has just reconciled them
    drift_sweep.tick_due(1029.0, objs)
    assert sweep == []
    drift_sweep.tick_due(1030.0, objs)
    assert sorted(sweep) == ["a", "b"]                                 # "bad" failed and did not stop the others
    drift_sweep.tick_due(1045.0, objs)
    assert sorted(sweep) == ["a", "b"]
    drift_sweep.tick_due(1061.0, objs)
    assert sorted(sweep) == ["a", "a", "b", "b"]
    assert drift_sweep.STATES[("ns", "bad")].next_at == 1061.0 + 30.0   # retried an interval later


def test_a_hung_check_fails_the_liveness_probe_and_holds_up_no_other(sweep, monkeypatch):
    release = threading.Event()

    def reconcile(b, strict):
        if b["metadata"]["name"] == "hung":
            release.wait(30)
        sweep.append(b["metadata"]["name"])

    monkeypatch.setattr(drift_sweep, "reconcile", reconcile)
    objs = [body("hung"), body("ok")]
    drift_sweep.tick_due(0.0, objs)
    try:
        drift_sweep.tick_due(30.0, objs)
        deadline = time.monotonic() + 10
        while "ok" not in sweep and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sweep == ["ok"]
        problem = loops.health(now=time.monotonic() + loops.STALL_S + 1)
        assert problem is not None and "drift tick of ns/hung" in problem, problem
    finally:
        release.set()
