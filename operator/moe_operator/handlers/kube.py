"""The few Kubernetes calls the handlers make, with 409 retries. Sync client: kopf runs sync handlers in threads."""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Callable

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from moe_operator.api import GROUP, PLURAL, VERSION

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayservices"
CONFLICT_RETRIES = 5
log = logging.getLogger(__name__)


class Writes:
    """Counts API writes by kind (the scale benchmark reports writes per resource)."""

    counts: dict[str, int] = {}

    @classmethod
    def add(cls, kind: str) -> None:
        cls.counts[kind] = cls.counts.get(kind, 0) + 1
        from .metrics import WRITES  # noqa: PLC0415 (metrics imports nothing of ours; lazy keeps kube standalone)

        WRITES.labels(kind).inc()


_api: client.CustomObjectsApi | None = None
_core: client.CoreV1Api | None = None      # one shared client: a new one per call costs a TLS handshake


POOL_SIZE = 32   # HTTP keep-alive connections; the client's default (5 x CPUs: 10 here) is below kopf's thread count
# (connect, read) seconds for every API call that names no ``_request_timeout``: the client's default is none, so a
# half-open connection (a dropped NAT entry, an API server gone mid-answer) blocked a loop's thread for ever while
# the liveness probe stayed green. urllib3 retries a GET up to 3 times: at most ~4 x 40 s per call.
REQUEST_TIMEOUT: tuple[float, float] = (10.0, 30.0)


class _ApiClient(client.ApiClient):
    """An ApiClient whose calls default to ``REQUEST_TIMEOUT`` (a call's own ``_request_timeout`` wins)."""

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        return super().call_api(method, url, header_params, body, post_params,
                                _request_timeout if _request_timeout is not None else REQUEST_TIMEOUT)


def login() -> None:
    """Configure the client from the pod's service account, else KUBECONFIG.

    The connection pool holds ``POOL_SIZE`` connections: with more handler threads than pooled connections,
    urllib3 opens extra ones and discards them ("Connection pool is full"), a TLS handshake each time. Every call
    times out after ``REQUEST_TIMEOUT`` unless it names its own.
    """
    global _api, _core
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, POOL_SIZE)
    _api = client.CustomObjectsApi(_ApiClient(cfg))
    _core = client.CoreV1Api(_api.api_client)


def api() -> client.CustomObjectsApi:
    if _api is None:
        login()
    assert _api is not None
    return _api


def core() -> client.CoreV1Api:
    """The shared core/v1 client (same connection pool as ``api()``): Secrets, ConfigMaps, Events."""
    if _core is None:
        login()
    assert _core is not None
    return _core


RAYCLUSTERS = "rayclusters"


def owned_by(obj: Any, uid: str | None) -> bool:
    """True when ``obj`` (a dict or a kubernetes client model) names ``uid`` among its ownerReferences.

    The operator writes to, deletes with, or hands out the contents of only what its MoEDeployment owns: an object
    of the same name that someone else made is never adopted (its owner would lose it when ours is deleted, and a
    Secret's token would be one its maker knows).
    """
    if not uid:
        return False
    if isinstance(obj, dict):
        refs = (obj.get("metadata") or {}).get("ownerReferences") or []
        return any(r.get("uid") == uid for r in refs)
    return any(r.uid == uid for r in (getattr(obj.metadata, "owner_references", None) or []))


def _get_ray_object(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return api().get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def get_rayservice(namespace: str, name: str) -> dict[str, Any] | None:
    return _get_ray_object(RAY_PLURAL, namespace, name)


def create_rayservice_object(namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Create and return the object the API server stored (no GET needed after it); None when it already exists."""
    try:
        created = api().create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, body)
        Writes.add("create")
        return created
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise


def _replace_ray_object(plural: str, kind: str, namespace: str, name: str,
                        mutate: Callable[[dict[str, Any]], bool]) -> bool:
    """Read-modify-replace a ray.io object, re-reading on 409 Conflict. ``mutate`` returns False for "no change".

    Returns True when a write happened. Optimistic concurrency (resourceVersion) means a concurrent writer
    (KubeRay, the autoscaler, a person) is never overwritten blindly.
    """
    for attempt in range(CONFLICT_RETRIES):
        current = _get_ray_object(plural, namespace, name)
        if current is None or not mutate(current):
            return False
        try:
            api().replace_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, plural, name, current)
            Writes.add("replace")
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
            log.info("conflict replacing %s %s/%s (attempt %d); retrying", kind, namespace, name, attempt + 1)
            time.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"{kind} {namespace}/{name}: still conflicting after {CONFLICT_RETRIES} attempts")


def replace_with_retry(namespace: str, name: str, mutate: Callable[[dict[str, Any]], bool]) -> bool:
    """Read-modify-replace the RayService (see _replace_ray_object)."""
    return _replace_ray_object(RAY_PLURAL, "RayService", namespace, name, mutate)


def get_moed(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return api().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def patch_moed_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    api().patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})
    Writes.add("status")


def read_configmap(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        cm = core().read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {"data": dict(cm.data or {})}


def list_moeds(namespaces: list[str]) -> list[dict[str, Any]]:
    """Every MoEDeployment in the watched namespaces (all namespaces when the list is empty)."""
    if namespaces:
        return [
            i for ns in namespaces for i in api().list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        ]
    return api().list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]


def active_raycluster(namespace: str, rayservice: dict[str, Any]) -> dict[str, Any] | None:
    """The RayCluster serving a RayService: status.activeServiceStatus.rayClusterName, else the one it owns."""
    st = rayservice.get("status") or {}
    name = (st.get("activeServiceStatus") or {}).get("rayClusterName")
    named = _get_ray_object(RAYCLUSTERS, namespace, name) if name else None
    if named is not None:
        return named
    uid = rayservice["metadata"].get("uid")
    owned = [c for c in api().list_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAYCLUSTERS)["items"]
             if any(r.get("uid") == uid for r in c["metadata"].get("ownerReferences") or [])
             and not c["metadata"].get("deletionTimestamp")]
    if len(owned) == 1:
        return owned[0]
    pending = (st.get("pendingServiceStatus") or {}).get("rayClusterName")
    live = [c for c in owned if c["metadata"]["name"] != pending]
    return live[0] if len(live) == 1 else None


def ray_worker_pods(namespace: str, cluster: str) -> list[dict[str, Any]]:
    """The worker pods of RayCluster ``cluster`` (labels KubeRay sets), as plain dicts (no model parsing)."""
    resp = core().list_namespaced_pod(namespace, label_selector=f"ray.io/cluster={cluster},ray.io/node-type=worker",
                                      _preload_content=False)
    try:
        return json.loads(resp.data).get("items") or []
    finally:
        resp.release_conn()


def replace_raycluster_with_retry(namespace: str, name: str, mutate: Callable[[dict[str, Any]], bool]) -> bool:
    """Read-modify-replace a RayCluster (KubeRay writes it too; see _replace_ray_object)."""
    return _replace_ray_object(RAYCLUSTERS, "RayCluster", namespace, name, mutate)


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A core/v1 Event about ``body``, posted directly (works outside kopf's handler context, unlike kopf.info).

    Sent as a plain dict and the reply left unparsed (``_preload_content=False``): nothing reads it, and building
    and parsing CoreV1Event models cost more CPU than the request itself during a 200-object burst.
    """
    from moe_operator.api.times import rfc3339

    meta = body["metadata"]
    now = rfc3339(time.time())
    ev = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
                           "kind": body.get("kind", "MoEDeployment"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid"),
                           "resourceVersion": meta.get("resourceVersion")},
        "type": type_, "reason": reason, "message": message[:1024], "firstTimestamp": now, "lastTimestamp": now,
        "count": 1, "source": {"component": "moe-operator"}, "reportingComponent": "moe-operator",
    }
    try:
        t0 = time.monotonic()
        resp = core().create_namespaced_event(meta["namespace"], ev, _preload_content=False)
        resp.read()          # drain (the connection goes back to the pool clean), but no JSON or model parsing
        resp.release_conn()
        log.debug("Event %s posted in %.3f s", reason, time.monotonic() - t0)
        Writes.add("event")
    except ApiException as exc:   # an Event is best effort: never fail a reconcile for it
        log.warning("could not post Event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)


_events: queue.Queue = queue.Queue()
_poster: threading.Thread | None = None
_poster_lock = threading.Lock()


def post_event_soon(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """Queue an Event for the one background poster thread, in order, one request in flight.

    Idle, it goes out within one round trip, as ``post_event`` would; during a burst of creates the Events trail
    behind the RayService writes instead of holding a handler thread each (a handler thread is what the next
    MoEDeployment waits for).
    """
    global _poster
    with _poster_lock:
        if _poster is None or not _poster.is_alive():
            _poster = threading.Thread(target=_post_queued, name="event-poster", daemon=True)
            _poster.start()
    _events.put((body, type_, reason, message))


def _post_queued() -> None:
    while True:
        args = _events.get()
        try:
            post_event(*args)
        except Exception:  # noqa: BLE001 - best effort, like post_event itself; keep the poster alive
            log.exception("posting a queued Event failed")
        finally:
            _events.task_done()
