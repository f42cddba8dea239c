"""``moe-operator``: run the kopf operator that turns MoEDeployments into KubeRay RayServices.

Usage: ``moe-operator [--namespace NS ...| --all-namespaces] [--liveness URL] [--catalog-configmap NS/NAME]
[--images FILE] [--metrics-port 8080] [--drift-interval 30] [--peering NAME]
[--allow-runtime-url-annotation] [--no-network-policy] [--kuberay-namespace NS]
[--kuberay-pod-labels K=V,...] [--metrics-namespace NS] [--metrics-hosts PATTERNS]``.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys

from moe_operator.errors import UserError
from moe_operator.render.networkpolicy import PolicySettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moe-operator", description="Serve MoEDeployments through KubeRay RayServices.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; glob patterns as kopf accepts)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    p.add_argument("--liveness", metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8081/healthz")
    p.add_argument("--catalog-configmap", metavar="NS/NAME", default=os.environ.get("MOE_CATALOG_CONFIGMAP"),
                   help="ConfigMap with cluster catalog overrides (prices, ascendResourceScheme, accelerators)")
    p.add_argument("--images", metavar="FILE", help="YAML mapping overriding the default images (see docs/operator.md)")
    p.add_argument("--metrics-port", type=int, default=8080, help="port of /metrics (0 disables it)")
    p.add_argument("--drift-interval", type=float, default=30.0, help="seconds between drift checks per resource")
    p.add_argument("--peering", metavar="NAME", default=None,
                   help="kopf peering object for active/standby replicas (priority from a hash of env POD_NAME)")
    p.add_argument("--workers", type=int, default=32,
                   help="threads running the sync handlers (and HTTP connections kept); a burst of N new "
                        "MoEDeployments waits about N/workers handler round trips")
    p.add_argument("--allow-runtime-url-annotation", action="store_true",
                   default=os.environ.get("MOE_ALLOW_RUNTIME_URL_ANNOTATION", "") == "1",
                   help="let annotation serving.moe-operator.io/runtime-url choose where the rebalancer sends the "
                        "runtime admin token (tests, out-of-cluster runtimes); off: KubeRay's serve Service only. "
                        "Anyone who may annotate a MoEDeployment could then receive the token")
    net = p.add_argument_group("NetworkPolicy of the Ray pods (docs/security.md; needs a CNI that enforces it)")
    net.add_argument("--network-policy", action=argparse.BooleanOptionalAction, default=True,
                     help="write a NetworkPolicy per MoEDeployment: Ray's ports only from its own pods and KubeRay, "
                          "Serve (8000) and Ray metrics (8080) from clients (default: on)")
    net.add_argument("--kuberay-namespace", metavar="NS", default=PolicySettings.kuberay_namespace,
                     help="namespace of KubeRay's operator pods, the only ones admitted to the dashboard (8265)")
    net.add_argument("--kuberay-pod-labels", metavar="K=V,...", default=None,
                     help="labels of KubeRay's operator pods (with --kuberay-namespace: both must match); "
                          "default app.kubernetes.io/name=kuberay-operator")
    net.add_argument("--operator-namespace", metavar="NS", default=os.environ.get("POD_NAMESPACE", ""),
                     help="namespace of this operator's pods, admitted to the dashboard (8265) to read which nodes "
                          "hold Serve replicas before a scale-down (default env POD_NAMESPACE; empty: not admitted)")
    net.add_argument("--operator-pod-labels", metavar="K=V,...", default="",
                     help="labels of this operator's pods (with --operator-namespace: both must match)")
    net.add_argument("--metrics-namespace", metavar="NS", default="",
                     help="only pods of this namespace (Prometheus) may scrape Ray's metrics port; default: anyone")
    p.add_argument("--metrics-hosts", metavar="PATTERNS", default=os.environ.get("MOE_METRICS_HOSTS", ""),
                   help="comma-separated host patterns (fnmatch, e.g. '*.svc,prometheus.example.com') that a "
                        "MoEDeployment's spec.autoscaling.metrics URL may name; others are refused without a "
                        "request. Empty (default): any host")
    p.add_argument("--verbose", "-v", action="store_true")
    return p


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def policy_settings(args: argparse.Namespace) -> PolicySettings | None:
    """The NetworkPolicy settings the flags ask for; None with --no-network-policy. ValueError naming the flag for
    bad labels or a namespace that is no DNS label (it would never match KubeRay's or Prometheus' namespace)."""
    if not args.network_policy:
        return None
    for flag, ns in (("--kuberay-namespace", args.kuberay_namespace), ("--metrics-namespace", args.metrics_namespace),
                     ("--operator-namespace", args.operator_namespace)):
        if ns and not _DNS_LABEL.match(ns):
            raise ValueError(f"{flag}: {ns!r} is not a namespace name (a DNS label: lower-case a-z, 0-9, '-')")
    try:
        labels = (PolicySettings.parse_labels(args.kuberay_pod_labels) if args.kuberay_pod_labels is not None
                  else PolicySettings().kuberay_pod_labels)
    except ValueError as exc:
        raise ValueError(f"--kuberay-pod-labels: {exc}") from None
    try:
        own = PolicySettings.parse_labels(args.operator_pod_labels) if args.operator_pod_labels else {}
    except ValueError as exc:
        raise ValueError(f"--operator-pod-labels: {exc}") from None
    if args.operator_namespace and not own:
        raise ValueError("--operator-pod-labels: needed with --operator-namespace (an empty selector would admit "
                         "every pod of that namespace to the Ray dashboard)")
    return PolicySettings(args.kuberay_namespace, labels, args.metrics_namespace, args.operator_namespace, own)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        print("error: give --namespace NS (repeatable) or --all-namespaces", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.catalog_configmap and "/" not in args.catalog_configmap:
        print("error: --catalog-configmap must be NAMESPACE/NAME", file=sys.stderr)
        return 2
    try:
        network_policy = policy_settings(args)
        from moe_operator.handlers.autoscale import parse_hosts

        metrics_hosts = parse_hosts(args.metrics_hosts)
    except ValueError as exc:
        message = str(exc)
        print(f"error: {message if message.startswith('--') else '--metrics-hosts: ' + message}", file=sys.stderr)
        return 2
    try:
        from moe_operator.handlers.config import CONFIG
        from moe_operator.render.images import Images

        CONFIG.images = Images.from_source(args.images) if args.images else Images.from_env()
    except (UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    CONFIG.catalog_configmap = args.catalog_configmap
    CONFIG.namespaces = list(args.namespace)
    CONFIG.drift_interval_seconds = args.drift_interval
    CONFIG.peering = args.peering
    CONFIG.network_policy = network_policy
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import kopf

    import moe_operator.handlers  # noqa: F401  (importing registers the handlers)
    from moe_operator.handlers import kube, leader, rebalance

    try:   # where the API server is: in-cluster, else the kubeconfig; without one kopf would retry forever
        kube.login()
    except Exception as exc:  # noqa: BLE001  (ConfigException, a YAML error, a missing file: all one answer)
        print(f"error: no Kubernetes configuration: not running in a cluster and the kubeconfig "
              f"({os.environ.get('KUBECONFIG') or '~/.kube/config'}) cannot be loaded ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})", file=sys.stderr)
        return 2

    rebalance.ALLOW_URL_ANNOTATION = args.allow_runtime_url_annotation
    from moe_operator.handlers import autoscale

    autoscale.METRICS_HOSTS = metrics_hosts

    if args.metrics_port:
        from moe_operator.handlers.metrics import serve_metrics
        serve_metrics(args.metrics_port)

    from moe_operator.handlers import loops

    # + the step loop, + each periodic consumer's object threads (handlers/loops.py: autoscaler, rebalancer, drift)
    kube.POOL_SIZE = max(kube.POOL_SIZE, args.workers + 4 + loops.TICK_WORKERS * len(loops.CONSUMERS))

    @kopf.on.startup()
    def _configure(settings: kopf.OperatorSettings, logger, **_):
        kube.login()
        from moe_operator.handlers.reconcile import warm_up
        logger.info("warm-up plan + render: %.2f s", warm_up())
        settings.posting.level = logging.INFO         # only our explicit kopf.info/warn calls become Events
        settings.execution.max_workers = args.workers  # sync handlers run in threads; most time is API round trips
        settings.watching.server_timeout = 300
        settings.persistence.finalizer = "serving.moe-operator.io/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="serving.moe-operator.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="serving.moe-operator.io")
        if args.namespace:
            settings.scanning.disabled = True          # fixed namespaces: no cluster-wide namespace scan (RBAC, ~50 s)

    asyncio.run(kopf.operator(
        clusterwide=args.all_namespaces,
        namespaces=args.namespace or None,
        liveness_endpoint=args.liveness,
        standalone=not args.peering,
        peering_name=args.peering,
        priority=leader.own_priority() if args.peering else None,
        identity=leader.own_identity() if args.peering else None,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
