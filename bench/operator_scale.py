"""Scale benchmark of the operator: N MoEDeployments applied at once against the real control plane.

Prints p50/p95/max seconds from each MoEDeployment's create call (16 client threads) to its RayService's creation (seen
by a watch), the operator's peak RSS (VmHWM, MB), and API writes per resource counted two ways: by the operator
(``moe_operator_api_writes_total``: RayService create/replace, status patches, Events) and by the API server
(``apiserver_request_total`` for moedeployments PATCH/PUT incl. kopf's own annotation patches, and rayservices
POST/PUT/PATCH). Then it waits ``--idle`` seconds and reports the writes made in that window (the first drift
sweep reports KubeRay's first RayService status there: one real change per object), then ``--settled`` seconds
once every object has reported KubeRay's first status (a full sweep) and reports those writes too (target 0).

    .venv/bin/python bench/operator_scale.py [--count 200] [--idle 20] [--kubeconfig PATH]

Without --kubeconfig (or MOE_TEST_KUBECONFIG) it starts the control plane itself with hack/k8s_stack.py.

Breakdown (extra output; the headline figure is unchanged): the operator writes timing marks
(handlers/trace.py) and a second watch sees each MoEDeployment's ADDED event, so each object's latency splits into
create call -> MoEDeployment ADDED on a watch -> kopf handler start -> RayService POST returned -> RayService
ADDED on the watch; plus the API server's mean request latency per resource/verb during the burst
(``apiserver_request_duration_seconds``). ``--pause-kuberay`` is a labelled side-by-side variant: KubeRay's
ray-operator is SIGSTOPped during the burst (state.json beside the kubeconfig names its PID), separating the
operator's own latency from the control plane's contention; it is resumed before the write counts.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack"))
CRD = ROOT / "crds" / "serving.moe-operator.io_moedeployments.yaml"
SPEC = {"model": {"source": "builtin://tiny-moe", "architecture": "tiny"}, "engine": "torch",
        "pools": [{"name": "cpu", "accelerator": "cpu", "devicesPerReplica": 1, "minReplicas": 0, "maxReplicas": 2,
                   "replicas": 0}],
        "autoscaling": {"enabled": False}}


def kubectl(kc: str, *args: str, input: str | None = None) -> str:
    p = subprocess.run(["kubectl", "--kubeconfig", kc, *args], input=input, capture_output=True, text=True, timeout=120)
    if p.returncode:
        raise SystemExit(f"kubectl {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apiserver_writes(kc: str) -> dict[str, float]:
    text = kubectl(kc, "get", "--raw", "/metrics")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") not in ("POST", "PUT", "PATCH", "APPLY"):
            continue
        if labels.get("resource") in ("moedeployments", "rayservices"):
            key = f"{labels['resource']}/{labels.get('subresource') or '-'}/{labels['verb']}"
            out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return out


def apiserver_latency(kc: str) -> dict[str, tuple[float, float]]:
    """(sum s, count) of apiserver_request_duration_seconds by resource/subresource/verb, for our hot resources."""
    text = kubectl(kc, "get", "--raw", "/metrics")
    out: dict[str, tuple[float, float]] = {}
    for line in text.splitlines():
        m = re.match(r"apiserver_request_duration_seconds_(sum|count)\{([^}]*)\} (\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if labels.get("resource") not in ("moedeployments", "rayservices", "events", "rayclusters", "pods"):
            continue
        if labels.get("verb") == "WATCH":
            continue
        key = f"{labels['resource']}/{labels.get('subresource') or '-'}/{labels['verb']}"
        s, c = out.get(key, (0.0, 0.0))
        out[key] = (s + float(m.group(3)), c) if m.group(1) == "sum" else (s, c + float(m.group(3)))
    return out


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (1..99) as the headline uses it; nan for no values."""
    if not values:
        return float("nan")
    v = sorted(values)
    return statistics.quantiles(v, n=100)[q - 1] if len(v) > 1 else v[0]


def read_trace(path: Path, ns: str) -> list[tuple[float, str, str]]:
    """(monotonic time, name, phase) marks of namespace ``ns`` from the operator's trace file (handlers/trace.py)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        t, obj, phase = line.split(maxsplit=2)
        o_ns, _, name = obj.partition("/")
        if o_ns == ns:
            out.append((float(t), name, phase))
    return out


def first_marks(trace: list[tuple[float, str, str]]) -> dict[str, dict[str, float]]:
    """{name: {phase: first time}}."""
    out: dict[str, dict[str, float]] = {}
    for t, name, phase in trace:
        out.setdefault(name, {}).setdefault(phase, t)
    return out


def status_writes(trace: list[tuple[float, str, str]], t0: float, t1: float) -> dict[str, int]:
    """Status writes between t0 and t1 by (changed keys | what our Ready message says about KubeRay)."""
    out: dict[str, int] = {}
    for t, _name, phase in trace:
        if t0 <= t < t1 and phase.startswith("status "):
            keys, _, ready = phase[len("status "):].partition(" | ")
            key = f"{keys} | {ready.split(': ', 1)[-1]}"
            out[key] = out.get(key, 0) + 1
    return out


def stack_pids(kc: str) -> dict[str, int]:
    """Control-plane PIDs from the stack's state.json beside the kubeconfig ({} when it is not ours)."""
    try:
        state = json.loads((Path(kc).resolve().parent / "state.json").read_text())
        return {c: int(r["pid"]) for c, r in state["pids"].items()}
    except (OSError, KeyError, ValueError):
        return {}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """utime + stime (s) of each process; CPU work is what a 2-core box runs out of, whatever else runs on it."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for comp, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[comp] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


def kuberay_pid(kc: str) -> int:
    """ray-operator's PID from the stack's state.json beside the kubeconfig (hack/k8s_stack.py writes it)."""
    state = Path(kc).resolve().parent / "state.json"
    try:
        return int(json.loads(state.read_text())["pids"]["ray-operator"]["pid"])
    except (OSError, KeyError, ValueError) as exc:
        raise SystemExit(f"error: --pause-kuberay needs {state} with the ray-operator PID ({exc})") from exc


def operator_writes(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^moe_operator_api_writes_total\{kind="(\w+)"\} ([0-9.e+]+)$', text, re.M)}


def diff(a: dict, b: dict) -> dict:
    return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b) if b.get(k, 0) != a.get(k, 0)}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds to watch for writes after convergence")
    ap.add_argument("--settled", type=float, default=40.0,
                    help="then a second window of this many seconds (>= the operator's 30 s drift interval, so a "
                         "full sweep runs in it) to count writes once KubeRay's first status is reported (0 = skip)")
    ap.add_argument("--kubeconfig", default=os.environ.get("MOE_TEST_KUBECONFIG"))
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--workers", type=int, default=None, help="pass --workers N to the operator (default: its own)")
    ap.add_argument("--pause-kuberay", action="store_true",
                    help="variant: SIGSTOP KubeRay's ray-operator during the burst (not the acceptance figure)")
    args = ap.parse_args()

    stack = None
    kc = args.kubeconfig
    if not kc:
        import k8s_stack
        stack = k8s_stack.Stack(Path(tempfile.mkdtemp(prefix="moe-bench-")))
        print("starting the control plane ...", flush=True)
        stack.up()
        kc = str(stack.kubeconfig)
        os.environ["PATH"] = str(Path(stack.state["bins"]["kubectl"]).parent) + os.pathsep + os.environ["PATH"]
    ns = f"bench-{int(time.time())}"
    op = None
    paused = None
    try:
        kubectl(kc, "apply", "--server-side", "-f", str(CRD))
        kubectl(
            kc, "wait", "--for=condition=Established", "--timeout=60s", "crd/moedeployments.serving.moe-operator.io"
        )
        kubectl(kc, "create", "namespace", ns)
        port = free_port()
        log = open(Path(tempfile.gettempdir()) / f"{ns}-operator.log", "wb")
        trace_file = Path(tempfile.gettempdir()) / f"{ns}-trace.txt"
        op = subprocess.Popen([sys.executable, "-m", "moe_operator.operator_main", "--namespace", ns,
                               "--metrics-port", str(port),
                               *(["--workers", str(args.workers)] if args.workers else [])],
                              stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, KUBECONFIG=kc, MOE_OPERATOR_TRACE=str(trace_file)), cwd=ROOT)
        time.sleep(4)  # operator start-up (kopf login, watches); not part of the measured latency

        from kubernetes import client, config, watch
        api = client.CustomObjectsApi(config.new_client_from_config(kc))
        seen: dict[str, float] = {}
        stop = threading.Event()

        def watch_added(plural_args: tuple[str, str, str], into: dict[str, float]) -> None:
            """Record when each object's ADDED event arrives on one long watch, resumed from its last
            resourceVersion when the server ends it (a fresh watch re-lists every object: seconds of the bench's
            own CPU in the middle of a burst). A failed stream is reopened (a 410 Gone: from a fresh list)."""
            group, version, plural = plural_args
            rv: str | None = None
            while not stop.is_set():
                w = watch.Watch()
                try:
                    kw = {"resource_version": rv} if rv else {}
                    for ev in w.stream(api.list_namespaced_custom_object, group, version, ns, plural,
                                       timeout_seconds=120, **kw):
                        if ev["type"] == "ADDED":
                            into.setdefault(ev["object"]["metadata"]["name"], time.monotonic())
                        if stop.is_set():
                            return
                    rv = w.resource_version
                except Exception as exc:  # noqa: BLE001 - keep watching; say so, the figure may be late
                    print(f"watch of {plural} failed ({type(exc).__name__}: {exc}); reopening", flush=True)
                    rv = None
                    time.sleep(0.2)

        def watcher():
            watch_added(("ray.io", "v1", "rayservices"), seen)

        moed_seen: dict[str, float] = {}

        def moed_watcher():
            """When the API server's watch fan-out delivers each MoEDeployment (what kopf's own watch also waits
            for)."""
            watch_added(("serving.moe-operator.io", "v1alpha1", "moedeployments"), moed_seen)

        t = threading.Thread(target=watcher, daemon=True)
        t.start()
        threading.Thread(target=moed_watcher, daemon=True).start()
        time.sleep(1)
        paused = kuberay_pid(kc) if args.pause_kuberay else None
        if paused:
            os.kill(paused, signal.SIGSTOP)
        lat0 = apiserver_latency(kc)
        from concurrent.futures import ThreadPoolExecutor
        api0, op0 = apiserver_writes(kc), operator_writes(port)
        created: dict[str, float] = {}

        def create(i: int) -> None:
            name = f"m{i:03d}"
            body = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
                    "metadata": {"name": name}, "spec": SPEC}
            created[name] = time.monotonic()
            api.create_namespaced_custom_object("serving.moe-operator.io", "v1alpha1", ns, "moedeployments", body)

        procs = {**stack_pids(kc), "moe-operator": op.pid}
        cpu0, self0 = cpu_seconds(procs), os.times()
        load_before = os.getloadavg()
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:    # all at once, as a GitOps sync would
            list(pool.map(create, range(args.count)))
        applied = time.monotonic() - t0
        deadline = t0 + args.timeout
        while len(seen) < args.count and time.monotonic() < deadline:
            time.sleep(0.2)
        lat = sorted(seen[n] - created[n] for n in seen if n in created)
        if len(lat) < args.count:
            print(f"only {len(lat)}/{args.count} RayServices within {args.timeout:.0f} s")
        cpu1, self1 = cpu_seconds(procs), os.times()
        lat1 = apiserver_latency(kc)
        load = os.getloadavg()
        if paused:
            os.kill(paused, signal.SIGCONT)
        marks = first_marks(read_trace(trace_file, ns))
        phases = {"create -> MoEDeployment ADDED (watch)": [], "MoEDeployment ADDED -> kopf handler start": [],
                  "handler start -> RayService POST returned": [], "POST returned -> RayService ADDED (watch)": [],
                  "create -> handler start": [], "handler start -> handler returned": []}
        for n, t_create in created.items():
            m = marks.get(n, {})
            for label, a, b in (("create -> MoEDeployment ADDED (watch)", t_create, moed_seen.get(n)),
                                ("MoEDeployment ADDED -> kopf handler start", moed_seen.get(n), m.get("handler")),
                                ("handler start -> RayService POST returned", m.get("handler"), m.get("posted")),
                                ("POST returned -> RayService ADDED (watch)", m.get("posted"), seen.get(n)),
                                ("create -> handler start", t_create, m.get("handler")),
                                ("handler start -> handler returned", m.get("handler"), m.get("returned"))):
                if a is not None and b is not None:
                    phases[label].append(b - a)
        # let statuses settle, then count writes per resource
        time.sleep(8)
        api1, op1 = apiserver_writes(kc), operator_writes(port)
        t_idle0 = time.monotonic()
        time.sleep(args.idle)
        api2, op2 = apiserver_writes(kc), operator_writes(port)
        t_idle1 = time.monotonic()
        if args.settled > 0:
            # every object's first KubeRay status reported (one status write at create + one for that report),
            # then a window with nothing left to report
            deadline = time.monotonic() + 120
            while operator_writes(port).get("status", 0) - op0.get("status", 0) < 2 * args.count \
                    and time.monotonic() < deadline:
                time.sleep(2)
            reported_all = time.monotonic() < deadline
            api2b, op2b = apiserver_writes(kc), operator_writes(port)
            time.sleep(args.settled)
            api3, op3 = apiserver_writes(kc), operator_writes(port)
        stop.set()
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
        n = args.count
        api_conv = diff(api0, api1)
        op_conv = diff(op0, op1)
        print(f"MoEDeployments: {n} (creating them took {applied:.2f} s with 16 client threads); converged: {len(lat)}")
        print(f"apply -> RayService created: p50 {q[49]:.2f} s, p95 {q[94]:.2f} s, max {lat[-1]:.2f} s")
        print(f"operator peak RSS (VmHWM): {peak_rss_mb(op.pid):.0f} MB")
        print(f"load average (1/5/15 min) before the burst: {' '.join(f'{x:.2f}' for x in load_before)}; "
              f"at convergence: {' '.join(f'{x:.2f}' for x in load)}"
              + ("; VARIANT: KubeRay paused during the burst (not the acceptance figure)" if paused else ""))
        print("breakdown per object (p50 / p95 s, n):")
        for label, v in phases.items():
            print(f"  {label:44s} {pct(v, 50):6.2f} / {pct(v, 95):6.2f}  ({len(v)})")
        burst = max(seen.values(), default=t0) - t0
        used = {c: cpu1[c] - cpu0[c] for c in cpu1 if c in cpu0}
        used["bench client"] = (self1.user + self1.system) - (self0.user + self0.system)
        print(f"CPU seconds used from the first create to convergence ({burst:.1f} s wall, "
              f"{sum(used.values()):.1f} CPU s): " + ", ".join(f"{c} {v:.1f}" for c, v in
                                                             sorted(used.items(), key=lambda kv: -kv[1])))
        print("API server mean latency during the burst (ms, requests):")
        for k in sorted(lat1):
            s1, c1 = lat1[k]
            s0, c0 = lat0.get(k, (0.0, 0.0))
            if c1 - c0 >= 1:
                print(f"  {k:36s} {1000 * (s1 - s0) / (c1 - c0):7.1f}  ({c1 - c0:.0f})")
        print(
            "writes per resource until converged (operator's count): "
            + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(op_conv.items()))
            + f"; total {sum(op_conv.values()) / n:.2f}"
        )
        print("writes per resource until converged (API server's count, moedeployments+rayservices, excl. Events): "
              + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(api_conv.items())))
        idle_api, idle_op = diff(api1, api2), diff(op1, op2)
        print(
            f"writes in the {args.idle:.0f} s after convergence: operator {sum(idle_op.values()):.0f} {idle_op or ''}; "
            f"API server (moedeployments, rayservices spec) "
            f"{sum(v for k, v in idle_api.items() if '/status/' not in k or k.startswith('moedeployments')):.0f} "
            f"{idle_api or ''}"
        )
        why = status_writes(read_trace(trace_file, ns), t_idle0, t_idle1)
        if why:
            print("  status writes in that window by changed keys | Ready message (what KubeRay reported):")
            for k, v in sorted(why.items(), key=lambda kv: -kv[1]):
                print(f"    {v:4d}  {k}")
        if args.settled > 0:
            set_api, set_op = diff(api2b, api3), diff(op2b, op3)
            print(
                f"writes in {args.settled:.0f} s once every object reported KubeRay's first status (a full drift "
                f"sweep{'' if reported_all else '; NOT all reported after 120 s'}): operator "
                f"{sum(set_op.values()):.0f} {set_op or ''}; API server "
                f"{sum(v for k, v in set_api.items() if '/status/' not in k or k.startswith('moedeployments')):.0f} "
                f"{set_api or ''}"
            )
        return 0
    finally:
        if paused:
            os.kill(paused, signal.SIGCONT)
        if op is not None:
            op.terminate()
            try:
                op.wait(timeout=10)
            except subprocess.TimeoutExpired:
                op.kill()
        subprocess.run(["kubectl", "--kubeconfig", kc, "delete", "namespace", ns, "--wait=false"],
                       capture_output=True, timeout=60)
        if stack is not None:
            stack.down()


if __name__ == "__main__":
    sys.exit(main())
