"""A deleted MoEDeployment leaves nothing behind that still speaks for it (issue 14 item 16): its metric series go,
so alerts on them stop firing; another deployment's series stay."""
from __future__ import annotations

from prometheus_client import generate_latest

from moe_operator.autoscaling.model import PoolModel, Settings
from moe_operator.autoscaling.policy import decide
from moe_operator.handlers import metrics, moedeployment
from moe_operator.planning.rebalance import RebalanceDecision


def _series_of(name: str) -> list[str]:
    return [line for line in generate_latest().decode().splitlines()
            if not line.startswith("#") and f'name="{name}"' in line]


def _record_everything(ns: str, name: str) -> None:
    pool = PoolModel(name="cpu", price_per_hour=0.05, capacity=100.0, min_replicas=1, max_replicas=3)
    metrics.record_autoscale(ns, name, decide(None, [pool], Settings(max_hourly_cost=1.0), None, 1000.0), 1.0)
    metrics.record(ns, name, {"pools": [{"name": "cpu", "desiredReplicas": 2, "readyReplicas": 1}], "costPerHour": 1})
    metrics.DECISIONS.labels(ns, name, "scale").inc()
    metrics.ERRORS.labels(ns, name).inc()
    metrics.record_rebalance(ns, name, "cpu", RebalanceDecision(True, {}, 1.5, 1.02, 0.32, "skewed"), posted=True)


def test_a_deleted_deployments_series_are_removed_and_no_other_tenants():
    _record_everything("team-a", "gone")
    _record_everything("team-b", "gone")       # same name, another namespace: a different deployment
    _record_everything("team-a", "stays")
    assert len(_series_of("gone")) >= 2 * 9
    before_stays = _series_of("stays")

    class Log:
        def info(self, *a):
            pass
    moedeployment.on_delete(name="gone", namespace="team-a", logger=Log())
    assert not [s for s in _series_of("gone") if 'namespace="team-a"' in s]
    assert [s for s in _series_of("gone") if 'namespace="team-b"' in s]
    assert _series_of("stays") == before_stays
