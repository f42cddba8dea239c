"""The chart ships the generated CRD: its copy in charts/moe-operator/crds/ must be byte-identical to crds/."""
from __future__ import annotations

import yaml

from chart_tools import CHART, ROOT


def test_chart_crd_is_the_generated_crd_byte_for_byte():
    source = ROOT / "crds" / "serving.moe-operator.io_moedeployments.yaml"
    copy = CHART / "crds" / source.name
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: run `python -m moe_operator.api.generate` "
        "(it writes both)"
    )


def test_chart_crds_are_only_known_files():
    """Helm installs every file in crds/: only ours and kopf's peering CRDs belong there."""
    names = sorted(p.name for p in (CHART / "crds").iterdir())
    assert names == ["kopf.dev_peerings.yaml", "serving.moe-operator.io_moedeployments.yaml"]
    peering = list(yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text()))
    assert {(d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in peering} == {
        ("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")}
    assert all(d["spec"]["group"] == "kopf.dev" and d["apiVersion"] == "apiextensions.k8s.io/v1" for d in peering)
