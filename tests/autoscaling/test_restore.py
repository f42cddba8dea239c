"""A restarted operator rebuilds its History from status: no scale-down inside the scale-down window, no delayed
scale-up, and the same decisions afterwards as an operator that never restarted."""
from __future__ import annotations

from helpers import obs, settings, two_pools

from moe_operator.autoscaling import decide
from moe_operator.autoscaling.policy import History
from moe_operator.autoscaling.restore import restore_history, restored_desired

POOLS = two_pools()
S = settings(scale_down_stabilization_s=300.0, hysteresis=0.15)


def status_after(decisions) -> dict:
    """The status fields the operator writes: pools' desiredReplicas and lastDecisions."""
    last = decisions[-1]
    return {"pools": [{"name": p, "desiredReplicas": n} for p, n in last.replicas.items()],
            "lastDecisions": [{"time": "2026-11-28T20:00:00Z", "replicas": dict(d.replicas), "reason": d.reason}
                              for d in decisions]}


def run(load, t0, t1, history, step=30.0):
    out, t = [], t0
    while t <= t1:
        d = decide(obs(t, load(t)), POOLS, S, history, t)
        history = d.history
        out.append(d)
        t += step
    return out, history


def test_restart_inside_the_scale_down_window_does_not_scale_down():
    high, low = 6000.0, 500.0
    decisions, _ = run(lambda t: high, 0, 600, None)                # scaled up, steady
    big = decisions[-1].replicas
    assert sum(big.values()) >= 4
    restart = 630.0                                                   # load drops as the operator restarts
    restored, origin = restore_history(status_after(decisions), POOLS, S, deployed={}, now=restart)
    assert restored.desired == big and origin == "status.pools"
    after, _ = run(lambda t: low, restart, restart + 240, restored)  # inside the 300 s window: keep
    assert all(d.replicas == big for d in after), [d.replicas for d in after]
    later, _ = run(lambda t: low, restart + 330, restart + 330, after[-1].history)
    assert sum(later[-1].replicas.values()) < sum(big.values())      # a full window of low load: scale down

    # without the restored History (what the operator did before): the first low sample scales down at once
    naive = decide(obs(restart, low), POOLS, S, History(desired=big), restart)
    assert sum(naive.replicas.values()) < sum(big.values())


def test_restored_history_delays_no_scale_up():
    decisions, _ = run(lambda t: 1000.0, 0, 300, None)
    restart = 330.0
    restored, _ = restore_history(status_after(decisions), POOLS, S, deployed={}, now=restart)
    surge = decide(obs(restart, 9000.0), POOLS, S, restored, restart)
    fresh = decide(obs(restart, 9000.0), POOLS, S, History(desired=decisions[-1].replicas), restart)
    assert surge.replicas == fresh.replicas and sum(surge.replicas.values()) > sum(decisions[-1].replicas.values())


def test_desired_comes_from_status_pools_then_last_decisions_then_the_rayservice():
    names = ["ascend", "h800"]
    st = {"pools": [{"name": "ascend", "desiredReplicas": 2}, {"name": "h800", "desiredReplicas": 1}],
          "lastDecisions": [{"replicas": {"ascend": 5, "h800": 5}}]}
    assert restored_desired(st, names, {"ascend": 9, "h800": 9}) == ({"ascend": 2, "h800": 1}, "status.pools")
    st["pools"] = [{"name": "ascend", "desiredReplicas": 2}]          # a pool missing: not trusted
    assert restored_desired(st, names, {}) == ({"ascend": 5, "h800": 5}, "status.lastDecisions")
    assert restored_desired({}, names, {"ascend": 3}) == ({"ascend": 3, "h800": 0}, "rayservice")
    assert restored_desired(None, names, {"h800": 1}) == ({"ascend": 0, "h800": 1}, "rayservice")


def test_restore_is_pure():
    import subprocess
    import sys

    code = (
        "import sys, moe_operator.autoscaling.restore\n"
        "print(','.join(m for m in ('kopf', 'kubernetes', 'ray', 'httpx', 'prometheus_api_client') if m in "
        "sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr
