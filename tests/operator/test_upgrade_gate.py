"""Budget-aware upgrades (handlers/upgrade.py): which writes make KubeRay start a second cluster, and when the surge
of running both is refused."""
from __future__ import annotations

import copy

from moe_operator.handlers import upgrade

LIVE = {
    "serveConfigV2": "applications: []",
    "rayClusterConfig": {
        "headGroupSpec": {"template": {"spec": {"containers": [{"name": "head", "image": "rt:1"}]}},
                          "serviceType": "ClusterIP"},          # an API default: not in the rendered spec
        "workerGroupSpecs": [
            {"groupName": "h800", "replicas": 2, "minReplicas": 1, "maxReplicas": 4, "numOfHosts": 1,
             "scaleStrategy": {"workersToDelete": ["w-1"]},
             "template": {"spec": {"containers": [{"name": "worker", "image": "rt:1"}]}}},
        ],
    },
}
PRICED = [upgrade.Pool("h800", 32.0, 4), upgrade.Pool("ascend", 16.0, 4)]


def desired(**change):
    d = copy.deepcopy(LIVE)
    del d["rayClusterConfig"]["headGroupSpec"]["serviceType"]
    g = d["rayClusterConfig"]["workerGroupSpecs"][0]
    del g["scaleStrategy"]
    for k, v in change.items():
        if k == "image":
            g["template"]["spec"]["containers"][0]["image"] = v
        elif k == "serve":
            d["serveConfigV2"] = v
        else:
            g[k] = v
    return d


def test_sizes_workers_to_delete_and_serve_config_roll_in_place():
    assert not upgrade.needs_new_cluster(LIVE, desired())
    assert not upgrade.needs_new_cluster(LIVE, desired(replicas=4, minReplicas=2, maxReplicas=8))
    assert not upgrade.needs_new_cluster(LIVE, desired(serve="applications: [{name: x}]"))
    assert upgrade.blocked(LIVE, desired(replicas=4), PRICED, 1.0) is None      # nothing to surge: never held


def test_a_pod_template_change_needs_a_new_cluster_and_an_appended_group_does_not():
    assert upgrade.needs_new_cluster(LIVE, desired(image="rt:2"))
    assert upgrade.needs_new_cluster(LIVE, desired(numOfHosts=2))
    more = desired()
    more["rayClusterConfig"]["workerGroupSpecs"].append(
        {"groupName": "ascend", "replicas": 1, "template": {"spec": {"containers": [{"name": "w", "image": "a:1"}]}}})
    assert not upgrade.needs_new_cluster(LIVE, more)             # KubeRay adds appended groups in place
    fewer = desired()
    fewer["rayClusterConfig"]["workerGroupSpecs"] = []
    assert upgrade.needs_new_cluster(LIVE, fewer)
    changed_and_more = copy.deepcopy(more)
    changed_and_more["rayClusterConfig"]["workerGroupSpecs"][0]["numOfHosts"] = 2
    assert upgrade.needs_new_cluster(LIVE, changed_and_more)


def test_the_surge_is_refused_over_max_hourly_cost_with_what_it_would_cost():
    why = upgrade.blocked(LIVE, desired(image="rt:2"), PRICED, 100.0)     # 2 + 2 replicas x $32 = $128/h
    assert why is not None and "$128.00/h" in why and "$64.00/h" in why and "maxHourlyCost $100/h" in why
    assert upgrade.blocked(LIVE, desired(image="rt:2"), PRICED, 128.0) is None
    assert upgrade.blocked(LIVE, desired(image="rt:2"), PRICED, None) is None


def test_max_replicas_never_holds_a_change_and_without_a_budget_nothing_does():
    """maxReplicas bounds what the autoscaler asks for, not a cluster's accelerators: with minReplicas = maxReplicas
    any surge would pass it, so a gate on it would hold every image change forever."""
    full = [upgrade.Pool("h800", 32.0, 2)]
    assert upgrade.blocked(LIVE, desired(image="rt:2"), full, None) is None
    assert upgrade.blocked(LIVE, desired(image="rt:2"), full, 1000.0) is None


def test_a_first_cluster_that_never_served_is_replaced_not_doubled():
    """A RayService whose first cluster never came up (bad image) has no active cluster: fixing it costs only the
    new one, so it is not held for a surge that cannot happen."""
    live = {"metadata": {}, "spec": copy.deepcopy(LIVE), "status": {"activeServiceStatus": {}}}
    want = {"metadata": {}, "spec": desired(image="rt:2")}
    assert upgrade.write_blocked(live, want, True, PRICED, 100.0) is None           # $64/h new only
    live["status"]["activeServiceStatus"]["rayClusterName"] = "m-abc12"
    assert upgrade.write_blocked(live, want, True, PRICED, 100.0) is not None       # $128/h with the serving one


def test_a_serving_group_the_new_spec_dropped_is_priced_at_the_dearest_pool():
    """Moving a pool to another accelerator renames its group: the serving group's price is not in the new spec, so
    it is counted at the dearest known pool instead of as free."""
    moved = desired(image="rt:2")
    moved["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"] = "ascend"
    why = upgrade.blocked(LIVE, moved, PRICED, 90.0)          # serving 2 x $32 (dearest) + new 2 x $16 = $96/h
    assert why is not None and "$96.00/h" in why


def test_only_the_write_the_reconcile_would_make_is_judged():
    """A drift sweep keeps the live sizes and the SPEC_CHANGE_ONLY fields (an operator upgrade that adds a
    securityContext rolls no cluster until the spec changes): such a difference is no upgrade to block, and nothing
    to write is nothing to block. A spec change (strict) that carries it is judged."""
    live = {"metadata": {"labels": {}, "ownerReferences": []}, "spec": copy.deepcopy(LIVE)}
    want = {"metadata": {"labels": {}, "ownerReferences": []}, "spec": desired()}
    assert upgrade.write_blocked(live, want, False, PRICED, 1.0) is None            # nothing to write
    hardened = copy.deepcopy(want)
    hardened["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "securityContext"] = {"runAsNonRoot": True}
    assert upgrade.write_blocked(live, hardened, False, PRICED, 1.0) is None        # the sweep leaves it alone
    assert upgrade.write_blocked(live, hardened, True, PRICED, 1.0) is not None     # a spec change applies it
    new_image = {"metadata": {"labels": {}, "ownerReferences": []}, "spec": desired(image="rt:2")}
    assert upgrade.write_blocked(live, new_image, False, PRICED, 1.0) is not None   # no status: assumed serving
    assert upgrade.write_blocked(live, new_image, False, PRICED, None) is None
