"""Ray's view of a RayCluster, read from its dashboard: which nodes hold Serve replicas (scale-down, issue 13).

The same endpoint KubeRay v1.5.0 reads for the RayService status (``GET /api/serve/applications/``,
``dashboardclient``), on the same address (the RayCluster's head Service ``<raycluster>-head-svc``, port 8265),
plus Ray's state API for placement groups and nodes. Read-only: the operator never submits anything there. KubeRay
sends no token to the dashboard, so Ray's token auth is off on these clusters (docs/security.md) and none is sent
here either. Each call is bounded (boundedhttp: total deadline, body cap): a dashboard that drips costs one tick.

Tests point the operator at a dashboard on loopback with the annotation ``serving.moe-operator.io/ray-dashboard-url``,
honoured only with ``--allow-runtime-url-annotation`` (as the runtime URL: an annotation must not steer the
operator's calls in production).
"""
from __future__ import annotations

from typing import Any

from moe_operator import boundedhttp
from moe_operator.autoscaling.scale_down import RayView, ray_view

from . import rebalance

URL_ANNOTATION = "serving.moe-operator.io/ray-dashboard-url"
DASHBOARD_PORT = 8265
DEADLINE_S = 10.0                       # all three calls of one look together
MAX_ANSWER_BYTES = 16 * 1024 * 1024     # serve details of a few hundred replicas are ~1 MB
_CLIENT = boundedhttp.client(max_connections=16)
PATHS = ("/api/serve/applications/",
         # removed groups hold nothing and pile up over a cluster's life: left out by the state API itself
         "/api/v0/placement_groups?detail=1&limit=10000&filter_keys=state&filter_predicates=%21%3D&filter_values=REMOVED",
         "/api/v0/nodes?limit=10000")


class DashboardError(Exception):
    """The dashboard could not be read or did not answer as Ray 2.60 does; the message quotes nothing it sent."""


def dashboard_url(body: dict[str, Any], raycluster: str) -> str:
    """The annotation when allowed (tests), else KubeRay's head Service of ``raycluster`` in the object's namespace."""
    meta = body["metadata"]
    url = (meta.get("annotations") or {}).get(URL_ANNOTATION)
    if url and rebalance.ALLOW_URL_ANNOTATION:
        return url.rstrip("/")
    return f"http://{raycluster}-head-svc.{meta['namespace']}.svc:{DASHBOARD_PORT}"


def look(url: str, apps: tuple[str, ...] = ()) -> RayView:
    """Busy node IPs of the cluster behind ``url``; DashboardError for anything but three well-formed answers that
    report every application of ``apps``."""
    answers = []
    with boundedhttp.deadline(DEADLINE_S):
        for path in PATHS:
            try:
                resp = boundedhttp.request(_CLIENT, "GET", f"{url}{path}", deadline_s=DEADLINE_S,
                                           max_bytes=MAX_ANSWER_BYTES)
            except boundedhttp.HttpError as exc:
                raise DashboardError(f"Ray dashboard {url} unreachable: {exc}") from None
            if resp.status != 200:
                raise DashboardError(f"Ray dashboard GET {url}{path.split('?')[0]}: HTTP {resp.status}")
            try:
                answers.append(resp.json())
            except ValueError:
                raise DashboardError(f"Ray dashboard GET {url}{path.split('?')[0]}: not JSON") from None
    try:
        return ray_view(*answers, apps=apps)
    except ValueError as exc:
        raise DashboardError(f"Ray dashboard {url}: {exc}") from None
