"""Operator-wide settings set once by ``moe-operator`` at start (catalog ConfigMap, images, timer interval)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from moe_operator.catalog import Catalog
from moe_operator.render.images import Images
from moe_operator.render.networkpolicy import PolicySettings

from . import kube


@dataclass
class OperatorConfig:
    catalog_configmap: str | None = None          # "<namespace>/<name>" of the cluster catalog overrides
    namespaces: list[str] = field(default_factory=list)   # watched namespaces; empty = all
    images: Images = field(default_factory=Images.from_env)
    drift_interval_seconds: float = 30.0  # how often each MoEDeployment re-checks its RayService
    peering: str | None = None  # kopf peering object name (active/standby replicas); None: standalone
    catalog_ttl_seconds: float = 30.0              # how long a read of the catalog ConfigMap is reused
    # the NetworkPolicy in front of each MoEDeployment's Ray pods (handlers/netpol.py); None: none is written.
    # Off in-process by default (library use, offline tests); ``moe-operator`` turns it on unless --no-network-policy
    network_policy: PolicySettings | None = None
    _catalog: Catalog | None = None
    _catalog_at: float = 0.0

    def catalog(self) -> Catalog:
        """The default catalog with the cluster's ConfigMap overrides, re-read at most every ``catalog_ttl_seconds``."""
        if self._catalog is not None and time.monotonic() - self._catalog_at < self.catalog_ttl_seconds:
            return self._catalog
        overrides: dict[str, Any] | None = None
        if self.catalog_configmap:
            ns, _, name = self.catalog_configmap.partition("/")
            overrides = kube.read_configmap(ns, name)
        self._catalog = Catalog.default().with_overrides(overrides)
        self._catalog_at = time.monotonic()
        return self._catalog


CONFIG = OperatorConfig()
