"""Active/standby with kopf peering: our own loops (drift sweep, autoscaler) run only on the active replica.

kopf pauses its watch streams on a standby replica but not tasks started from startup handlers, so those
loops read the peering object themselves and act only when no live peer has a higher (or equal) priority,
the rule kopf applies to itself (kopf/_core/engines/peering.py).
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket

from kubernetes.client.rest import ApiException

from . import kube
from .config import CONFIG

log = logging.getLogger(__name__)


def own_identity() -> str:
    """This replica's peering identity: POD_NAME in a pod, else host/pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}@{os.getpid()}"


def own_priority() -> int:
    """A stable priority from POD_NAME (replicas must differ, or kopf pauses them all): 1..2^30."""
    digest = hashlib.sha256(own_identity().encode()).digest()
    return 1 + int.from_bytes(digest[:4], "big") % (1 << 30)


def is_active() -> bool:
    """True without peering, else when this replica has the highest priority among the live peers."""
    if not CONFIG.peering:
        return True
    from kopf._core.engines.peering import Peer   # kopf's own liveness rule (lastseen + lifetime)

    try:
        if CONFIG.namespaces:
            objs = [kube.api().get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", CONFIG.peering)
                    for ns in CONFIG.namespaces]
        else:
            objs = [kube.api().get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", CONFIG.peering)]
    except ApiException as exc:
        log.warning("cannot read peering %s (%s): acting as standby", CONFIG.peering, exc.reason)
        return False
    me, prio = own_identity(), own_priority()
    for obj in objs:
        for ident, info in (obj.get("status") or {}).items():
            if ident == me:
                continue
            peer = Peer(identity=ident, **info)
            if not peer.is_dead and peer.priority >= prio:
                return False
    return True
