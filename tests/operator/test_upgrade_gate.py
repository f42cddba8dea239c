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


def test_the_surge_is_refused_past_a_pool_s_max_replicas():
    why = upgrade.blocked(LIVE, desired(image="rt:2", replicas=3), PRICED, None)    # 2 serving + 3 new > 4
    assert why is not None and "pool h800 would hold 5 replicas (2 serving + 3 new) > maxReplicas 4" in why
    assert upgrade.blocked(LIVE, desired(image="rt:2", replicas=2), PRICED, None) is None


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
    assert upgrade.write_blocked(live, new_image, False, PRICED, 1.0) is not None
    assert upgrade.write_blocked(live, new_image, False, PRICED, None) is None
