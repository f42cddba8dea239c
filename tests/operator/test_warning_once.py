"""A Warning goes out once per distinct problem, even when two reconciles of one object race.

The update handler, the drift sweep and the RayService watch each reconcile a MoEDeployment, in different
threads, from the object as each read it. Two that run at once both see a status without the problem and both
decided to warn: the project's CI saw two identical UpgradeBlockedByBudget Events posted in the same second
(tests/operator/test_upgrade_on_cluster.py). apply_outcome keeps the last time it posted each Warning per object.
"""
from __future__ import annotations

import threading
from types import SimpleNamespace

from moe_operator.handlers import kube, reconcile

BODY = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
        "metadata": {"name": "up", "namespace": "team-a", "uid": "u-1", "generation": 2}, "status": {}}


def _run(monkeypatch, outcomes, body=BODY, threads=1):
    posted = []
    monkeypatch.setattr(kube, "post_event", lambda b, t, r, m: posted.append((b["metadata"]["uid"], t, r, m)))
    monkeypatch.setattr(reconcile, "_warned", {})

    def one(outcome):
        reconcile.apply_outcome(body, outcome, SimpleNamespace(status={}))

    if threads == 1:
        for o in outcomes:
            one(o)
    else:
        ts = [threading.Thread(target=one, args=(o,)) for o in outcomes]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return posted


def test_two_reconciles_from_the_same_stale_status_post_one_warning(monkeypatch):
    held = reconcile.Outcome({}, [("Warning", "UpgradeBlockedByBudget", "the new cluster costs $20.00/h")])
    assert len(_run(monkeypatch, [held, held])) == 1
    assert len(_run(monkeypatch, [held] * 8, threads=8)) == 1


def test_a_new_message_another_object_and_normal_events_still_go_out(monkeypatch):
    a = reconcile.Outcome({}, [("Warning", "UpgradeBlockedByBudget", "costs $20.00/h")])
    b = reconcile.Outcome({}, [("Warning", "UpgradeBlockedByBudget", "costs $30.00/h")])
    n = reconcile.Outcome({}, [("Normal", "Updated", "updated RayService up")])
    posted = _run(monkeypatch, [a, b, n, n])
    assert [p[3] for p in posted] == ["costs $20.00/h", "costs $30.00/h", "updated RayService up",
                                      "updated RayService up"]
    other = {**BODY, "metadata": {**BODY["metadata"], "uid": "u-2"}}
    posted = _run(monkeypatch, [a], body=BODY) + _run(monkeypatch, [a], body=other)
    assert len(posted) == 2


def test_the_same_warning_goes_out_again_once_the_window_has_passed(monkeypatch):
    held = reconcile.Outcome({}, [("Warning", "UpgradeBlockedByBudget", "m")])
    clock = [1000.0]
    monkeypatch.setattr(reconcile.time, "monotonic", lambda: clock[0])
    posted = []
    monkeypatch.setattr(kube, "post_event", lambda b, t, r, m: posted.append(m))
    monkeypatch.setattr(reconcile, "_warned", {})
    reconcile.apply_outcome(BODY, held, SimpleNamespace(status={}))
    clock[0] += reconcile.WARNING_REPEAT_S + 1
    reconcile.apply_outcome(BODY, held, SimpleNamespace(status={}))
    assert posted == ["m", "m"]
