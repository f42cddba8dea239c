"""`moectl up -f spec.yaml`: serve a MoEDeployment locally through Ray Serve, no cluster needed.

The serveConfigV2 is the one the operator renders for the RayService (moe_operator.render), deployed onto a
local Ray through Serve's config API; only ``engine: torch`` can run this way. With MOE_ADMIN_TOKEN set in the
environment the runtime admin API (docs/http-api.md) is on: the local Ray's workers inherit this process's env.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from moe_operator.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("up", help="serve a MoEDeployment locally (local Ray + Ray Serve, OpenAI API)",
                              description=__doc__.splitlines()[0])
    p.add_argument("-f", "--filename", required=True, help="MoEDeployment YAML file")
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP endpoint listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="logical CPUs of the local Ray (default: max(4, cores); Ray does not pin them)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the app to start")
    p.add_argument("--no-autoscale", action="store_true",
                   help="do not run the autoscaler even when spec.autoscaling.enabled is true")
    p.add_argument("--autoscale-interval", type=float, default=None,
                   help="seconds between autoscaling decisions (default spec.autoscaling.intervalSeconds)")
    p.add_argument("--metrics-url", default=None,
                   help="where the autoscaler reads metrics: a Prometheus base URL, or a /metrics URL to scrape "
                        "(default: spec.autoscaling.metrics.prometheus.url if set, else this app's own /metrics)")
    p.add_argument("--rate-window", type=int, default=60,
                   help="seconds of the PromQL rate() window when reading from Prometheus (default 60)")
    p.set_defaults(func=run)


def serve_config_for(path: str) -> tuple[str, str, dict]:
    """(app name, served model name, serveConfigV2 dict) for the MoEDeployment in ``path``.

    As the operator renders it.
    """
    from dataclasses import replace

    import yaml

    from moe_operator.api import load_manifest
    from moe_operator.catalog import Catalog
    from moe_operator.render.context import build_render_input
    from moe_operator.render.serve import serve_config

    manifest = load_manifest(path)
    spec = manifest.spec
    if spec.engine != "torch":
        raise UserError(f"{path}: moectl up runs engine: torch only (this spec has engine: {spec.engine}); "
                        "vllm deployments need a cluster")
    catalog = Catalog.default()
    for pool in spec.pools:
        acc = catalog.get(pool.accelerator)
        if acc.vendor != "cpu" and pool.devices_per_replica > 1:
            raise UserError(f"{path}: pool {pool.name} needs {pool.devices_per_replica} devices per replica; "
                            "moectl up runs one process per replica on this machine")
    r = build_render_input(manifest.metadata.name, "default", spec, catalog, _plan_or_none(spec, catalog))
    # the plan prices the pools for the router; its expert placement (shard actors asking for devices) is a
    # cluster's: locally every replica keeps its experts in its own process, as before
    r = replace(r, pools=tuple(replace(p, placement=None) for p in r.pools))
    config = yaml.safe_load(serve_config(r))
    return manifest.metadata.name, r.served_model_name, config


def _plan_or_none(spec, catalog):
    """The plan (the router prices pools from its capacities), or None where planning cannot size this spec
    locally: moectl up then serves with every pool priced the same."""
    from moe_operator.errors import SpecInvalid
    from moe_operator.planning import plan_deployment

    try:
        return plan_deployment(spec, catalog, "local")
    except SpecInvalid:
        return None


def _pool_resources(config: dict, max_replicas: dict[str, int] | None = None) -> dict[str, float]:
    """Custom resources the local Ray must advertise: enough of each pool's for its deployments' replicas
    (4x the initial replicas, and at least maxReplicas so that the local autoscaler can reach it)."""
    need: dict[str, float] = {}
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            name = dep.get("name", "")
            top = (max_replicas or {}).get(name[len("engine-"):], 0) if name.startswith("engine-") else 0
            n = max(4 * max(1, int(dep.get("num_replicas", 1))), int(top))
            for res, amount in (dep.get("ray_actor_options") or {}).get("resources", {}).items():
                need[res] = need.get(res, 0) + float(amount) * n
    return need


def autoscaler_for(path: str, args: argparse.Namespace, config: dict, emit=print):
    """The local autoscaling loop for the spec in ``path`` (None when disabled) and its interval in seconds."""
    from moe_operator.api import load_manifest
    from moe_operator.autoscaling.from_spec import pool_models_from_spec, settings_from_spec
    from moe_operator.autoscaling.local_loop import LocalAutoscaler
    from moe_operator.autoscaling.sources.prometheus import PrometheusSource
    from moe_operator.autoscaling.sources.scrape import ScrapeSource

    manifest = load_manifest(path)
    a = manifest.spec.autoscaling
    if args.no_autoscale or a is None or not a.enabled:
        return None, 0.0
    interval = args.autoscale_interval if args.autoscale_interval is not None else float(a.interval_seconds)
    if interval <= 0:
        raise UserError(f"--autoscale-interval {interval:g} must be > 0 seconds")
    if args.rate_window < 1:
        raise UserError(f"--rate-window {args.rate_window} must be >= 1 second")
    pools, weights = pool_models_from_spec(manifest)
    settings = settings_from_spec(a, weights)
    model = config["applications"][0]["args"]["model_name"]
    url = args.metrics_url
    if url is None and a.metrics.prometheus is not None:
        url = a.metrics.prometheus.url
    if url is None:
        url = f"http://{args.host}:{args.port}/metrics"
    if url.rstrip("/").endswith("/metrics"):
        source = ScrapeSource(url, model=model)
    else:
        source = PrometheusSource(url, model=model, window=f"{args.rate_window}s")
    initial = {p.name: int(p.num_replicas) for p in _pools_of(config)}
    app_name = config["applications"][0]["name"]
    from moe_runtime import local_serve as local

    state = {"config": config}

    def apply(replicas) -> None:
        state["config"] = local.scale(state["config"], dict(replicas), args.host, args.port)

    loop = LocalAutoscaler(source, pools, settings, ready=lambda: local.running_replicas(app_name), apply=apply,
                           initial=initial, emit=emit)
    return loop, interval


def _pools_of(config: dict):
    from moe_runtime.config import RuntimeConfig

    return RuntimeConfig.model_validate(config["applications"][0]["args"]).pools


def _children() -> set[int]:
    """Pids whose parent is this process (Linux /proc; empty elsewhere)."""
    me, out = os.getpid(), set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for d in entries:
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        out.add(int(d))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _stop_children(keep: set[int], grace_s: float = 5.0) -> None:
    """SIGTERM (then SIGKILL) the children started since ``keep`` was taken."""
    import time

    new = _children() - keep
    for pid in new:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while new and time.monotonic() < deadline:
        time.sleep(0.1)
        new &= _children()
    for pid in new:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _ray_init(ray, console, attempts: int = 3, **kw) -> None:
    """ray.init, retried when the raylet misses Ray's fixed 30 s registration wait (a busy machine)."""
    from moe_runtime.local_serve import serve_env_defaults

    serve_env_defaults()
    for attempt in range(1, attempts + 1):
        before = _children()
        try:
            ray.init(**kw)
            return
        except Exception as exc:  # Ray raises a bare Exception for this one
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            console.print(f"Ray did not start in time (attempt {attempt}/{attempts}); retrying")
            ray.shutdown()
            _stop_children(before)  # the failed Node never registered, so ray.shutdown() cannot stop its processes


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    app_name, model, config = serve_config_for(args.filename)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a TCP port")

    from moe_runtime import local_serve as local  # noqa: PLC0415 (torch and ray are only needed from here on)

    loop, interval = autoscaler_for(args.filename, args, config, emit=lambda line: print(line, flush=True))

    if not local.port_free(args.host, args.port):
        raise UserError(f"{args.host}:{args.port} is already in use; stop what listens there or pass --port")
    source = config["applications"][0]["args"]["model_source"]

    stop = threading.Event()

    def on_signal(*_) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if source.startswith("builtin://"):
            from moe_runtime.checkpoint.tiny import ensure_tiny_checkpoint

            with console.status(f"preparing {source} (generated locally on first use)"):
                path = ensure_tiny_checkpoint()
            console.print(f"[green]✓[/] checkpoint {path}")
        import ray

        num_cpus = args.num_cpus or max(4, os.cpu_count() or 1)
        with console.status("starting local Ray"):
            tops = {p.name: p.max_replicas for p in loop.pools} if loop is not None else None
            _ray_init(ray, console, num_cpus=num_cpus, resources=_pool_resources(config, tops),
                      include_dashboard=False, log_to_driver=False, configure_logging=False)
        for s in previous:  # ray.init installs its own SIGTERM handler (which aborts); ours must win
            signal.signal(s, on_signal)
        console.print(f"[green]✓[/] Ray started ({num_cpus} CPUs)")
        try:
            with console.status("deploying the Serve application") as status:
                local.deploy(config, args.host, args.port)

                def progress(app_status: str, deps: dict[str, str]) -> None:
                    parts = ", ".join(f"{d}: {s}" for d, s in sorted(deps.items()))
                    status.update(f"deploying {app_name}: {app_status}" + (f" ({parts})" if parts else ""))
                    if stop.is_set():
                        raise KeyboardInterrupt

                local.wait_running(app_name, args.timeout, progress)
            console.print(f"[green]✓[/] application {app_name} running")
            print(f"OpenAI endpoint: http://{args.host}:{args.port}/v1  model: {model}", flush=True)
            if os.environ.get("MOE_ADMIN_TOKEN", "").strip():
                print(f"admin API: http://{args.host}:{args.port}/admin/v1  (Authorization: Bearer $MOE_ADMIN_TOKEN)",
                      flush=True)
            ticker = None
            if loop is not None:
                ticker = threading.Thread(target=loop.run, args=(interval, stop), name="autoscaler", daemon=True)
                ticker.start()
                console.print(f"autoscaling every {interval:g} s from {getattr(loop.source, 'url', '?')} "
                              "(--no-autoscale disables)")
            console.print("serving; Ctrl-C stops")
            while not stop.wait(0.5):
                pass
            console.print("shutting down")
            if ticker is not None:
                ticker.join(15)  # let a tick in flight finish before Serve goes away
        except RuntimeError as exc:
            print(f"error: {exc}", flush=True, file=sys.stderr)
            return 1
        finally:
            with console.status("stopping Serve and Ray"):
                local.shutdown()
        console.print("[green]✓[/] stopped")
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
