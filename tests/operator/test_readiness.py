"""Ready replicas per pool are counted from the worker pods that are Ready, not invented from the desired count
(issue 13 "Truthful status"): a killed pod, one still starting, one terminating, or one host of a multi-host
replica missing each lower the count; the RayService's status and the autoscaler read the same figure."""
from __future__ import annotations

from moe_operator.handlers.readiness import ready_by_group

RC = {"metadata": {"name": "rc-1"},
      "spec": {"workerGroupSpecs": [{"groupName": "h800", "replicas": 2, "numOfHosts": 2},
                                    {"groupName": "cpu", "replicas": 3}]}}


def pod(group: str, ready: bool = True, deleting: bool = False, cluster: str = "rc-1") -> dict:
    meta = {"labels": {"ray.io/group": group, "ray.io/cluster": cluster, "ray.io/node-type": "worker"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    return {"metadata": meta, "status": {"phase": "Running",
                                         "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_every_replica_ready():
    pods = [pod("h800")] * 4 + [pod("cpu")] * 3
    assert ready_by_group(RC, pods) == {"h800": 2, "cpu": 3}


def test_a_killed_a_starting_and_a_terminating_pod_each_count_against_their_pool():
    pods = [pod("h800")] * 3 + [pod("h800", ready=False)] + [pod("cpu"), pod("cpu", deleting=True)]
    assert ready_by_group(RC, pods) == {"h800": 1, "cpu": 1}       # 3 of 4 hosts: one whole 2-host replica


def test_pods_of_another_cluster_or_beyond_the_group_size_do_not_count():
    pods = [pod("cpu")] * 5 + [pod("cpu", cluster="rc-old")] * 3
    assert ready_by_group(RC, pods) == {"h800": 0, "cpu": 3}
