"""A real Kubernetes control plane on 127.0.0.1 for tests and by hand, without Docker.

etcd -> kube-apiserver (RBAC, client-certificate admin, service-account signing) -> kube-controller-manager,
kube-scheduler, kwok (fake nodes and pods) -> KubeRay CRDs (Established) -> KubeRay's ray-operator, plus fake
accelerator nodes labelled like real clusters label them. Every process logs to ``<state>/logs/<component>.log``;
``<state>/state.json`` records ports and the exact PIDs started (with their start times, so ``down`` never kills a
recycled PID). Used by ``hack/cluster.sh`` and by the ``cluster`` fixture in ``tests/conftest.py``.

Binaries come from ``hack/test-binaries.sh`` (see ``find_binaries``); KubeRay's CRDs and kwok's stages are read
from the Go module cache at run time.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HACK = Path(__file__).resolve().parent
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "ray-operator")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "ray-operator")
KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
KUBERAY_CRDS = ("rayclusters", "rayjobs", "rayservices")
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"


class StackError(RuntimeError):
    """The control plane could not be started or found; the message says which component and where its log is."""


class MissingBinaries(StackError):
    """Some binaries are not built; the message names them and the command that builds them."""


# --------------------------------------------------------------------------------------------- binaries
def versions() -> dict[str, str]:
    """Pinned versions from hack/versions.env (shared with hack/test-binaries.sh)."""
    out = {}
    for line in (HACK / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def bin_cache() -> Path:
    return Path(os.environ.get("MOE_TEST_BIN_CACHE", Path.home() / ".cache/moe-operator/bin"))


def default_bin_dir() -> Path:
    v = versions()
    return bin_cache() / (
        f"stack-k8s{v['K8S_VERSION']}-etcd{v['ETCD_VERSION']}-kwok{v['KWOK_VERSION']}"
        f"-kuberay{v['KUBERAY_VERSION']}-helm{v['HELM_VERSION']}"
    )


def find_binaries() -> dict[str, Path]:
    """Locate each binary: MOE_TEST_BINARIES, then KUBEBUILDER_ASSETS, then the cache of hack/test-binaries.sh."""
    dirs = [os.environ.get("MOE_TEST_BINARIES"), os.environ.get("KUBEBUILDER_ASSETS"), str(default_bin_dir())]
    found, missing = {}, []
    for name in BINARIES:
        for d in dirs:
            if d and os.access(Path(d) / name, os.X_OK):
                found[name] = Path(d) / name
                break
        else:
            missing.append(name)
    if missing:
        raise MissingBinaries(
            f"missing {', '.join(missing)} (looked in MOE_TEST_BINARIES, KUBEBUILDER_ASSETS, {default_bin_dir()}); "
            "build them with hack/test-binaries.sh"
        )
    return found


def go_module_dir(module: str, version: str) -> Path:
    """Directory of ``module@version`` in the Go module cache, downloading it through the proxy if needed."""
    escaped = "".join("!" + c.lower() if c.isupper() else c for c in module)
    gopath = os.environ.get("GOPATH", str(Path.home() / "go")).split(os.pathsep)[0]
    cache = os.environ.get("GOMODCACHE") or str(Path(gopath) / "pkg/mod")
    path = Path(cache) / f"{escaped}@{version}"
    if path.is_dir():
        return path  # no go needed at test time when the module is already in the cache
    _go_env("GOMODCACHE")  # clear error when go is missing
    proc = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                          capture_output=True, text=True, timeout=300, cwd="/")
    info = json.loads(proc.stdout or "{}")
    if proc.returncode or not info.get("Dir"):
        raise StackError(f"cannot get Go module {module}@{version}: {info.get('Error') or proc.stderr.strip()}")
    return Path(info["Dir"])


def _go_env(name: str) -> str:
    if not shutil.which("go"):
        raise StackError("go not found on PATH: needed to read KubeRay CRDs and kwok stages from the module cache")
    return subprocess.run(["go", "env", name], capture_output=True, text=True, check=True).stdout.strip()


# --------------------------------------------------------------------------------------------- PKI
def write_pki(d: Path) -> None:
    """CA, apiserver serving cert, admin client cert (O=system:masters) and service-account key pair, as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def cert(subject, key, issuer, issuer_key, *, ca=False, sans=(), usage=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.subject if issuer else subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 (issuer_key or key).public_key()), critical=False))
        if ca:
            b = b.add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            b = b.add_extension(
                x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
            )
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return b.sign(issuer_key or key, hashes.SHA256())

    def name(cn, org=None):
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert(name("moe-test-ca"), ca_key, None, None, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                      "kubernetes.default.svc.cluster.local")]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.0.0.1")]
    srv = cert(name("kube-apiserver"), srv_key, ca, ca_key, sans=sans, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    adm_key = ec.generate_private_key(ec.SECP256R1())
    adm = cert(name("moe-test-admin", "system:masters"), adm_key, ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pem = serialization.Encoding.PEM
    files = {
        "ca.crt": ca.public_bytes(pem), "ca.key": pem_key(ca_key),
        "server.crt": srv.public_bytes(pem), "server.key": pem_key(srv_key),
        "admin.crt": adm.public_bytes(pem), "admin.key": pem_key(adm_key),
        "sa.key": pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for fname, data in files.items():
        (d / fname).write_bytes(data)
        os.chmod(d / fname, 0o600)


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    """Admin kubeconfig with absolute file references (so it can be used from any directory)."""
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "moe-test",
        "clusters": [{"name": "moe-test", "cluster": {"server": server,
                                                     "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "admin", "user": {"client-certificate": str(pki / "admin.crt"),
                                             "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "moe-test", "context": {"cluster": "moe-test", "user": "admin",
                                                      "namespace": "default"}}],
    }
    path.write_text(json.dumps(doc, indent=2))  # JSON is YAML: no yaml dependency here


# --------------------------------------------------------------------------------------------- fake nodes
@dataclass(frozen=True)
class NodeGroup:
    """A group of identical fake nodes. cpu in cores, memory in GiB; ``device`` is the extended resource."""
    prefix: str
    count: int
    cpu: int
    memory_gib: int
    device: str
    devices: int
    arch: str
    labels: dict = field(default_factory=dict)


NODE_GROUPS = (
    # 8x H800 SXM5 80 GB, 2x Xeon 8468 (192 threads), 2 TiB.
    NodeGroup("h800", 2, 192, 2048, "nvidia.com/gpu", 8, "amd64", {
        "nvidia.com/gpu.product": "NVIDIA-H800", "nvidia.com/gpu.memory": "81559", "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.present": "true", "node.kubernetes.io/instance-type": "gpu-h800-8x"}),
    # 8x A100 SXM4 80 GB, 2x EPYC 7742 (256 threads), 1 TiB.
    NodeGroup("a100", 2, 256, 1024, "nvidia.com/gpu", 8, "amd64", {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920",
        "nvidia.com/gpu.count": "8", "nvidia.com/gpu.present": "true",
        "node.kubernetes.io/instance-type": "gpu-a100-8x"}),
    # Atlas 800T A2: 8x Ascend 910B 64 GB, 4x Kunpeng 920 (192 cores), 1.5 TiB, arm64.
    NodeGroup("ascend910b", 2, 192, 1536, "huawei.com/Ascend910", 8, "arm64", {
        "accelerator": "huawei-Ascend910", "node.kubernetes.io/npu.chip.name": "910B3",
        "accelerator-type": "module-910b-8", "host-arch": "huawei-arm",
        "node.kubernetes.io/instance-type": "npu-910b-8x"}),
)


def node_manifests(groups=NODE_GROUPS) -> list[dict]:
    """Node objects kwok manages (annotation ``kwok.x-k8s.io/node=fake``); allocatable leaves room for the system."""
    nodes = []
    for g in groups:
        for i in range(g.count):
            name = f"kwok-{g.prefix}-{i}"
            capacity = {"cpu": str(g.cpu), "memory": f"{g.memory_gib}Gi", "pods": "110",
                        "ephemeral-storage": "3500Gi", g.device: str(g.devices)}
            allocatable = dict(capacity, cpu=f"{g.cpu * 1000 - 2000}m", memory=f"{g.memory_gib - 16}Gi",
                               **{"ephemeral-storage": "3400Gi"})
            labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": g.arch,
                      "beta.kubernetes.io/arch": g.arch, "beta.kubernetes.io/os": "linux", "type": "kwok",
                      "moe-test/node-group": g.prefix, **g.labels}
            nodes.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": {FAKE_NODE_ANNOTATION: "fake"}},
                "status": {"capacity": capacity, "allocatable": allocatable},
            })
    return nodes


# --------------------------------------------------------------------------------------------- processes
def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port that binds now, taken below the kernel's ephemeral range where one fits: a port from that
    range can be taken before the component binds it by any outgoing connection (the API server's to etcd open
    dozens), which made kube-controller-manager fail with "address already in use"."""
    lo, _ = _ephemeral_range()
    rng = random.Random()
    if lo > 12000:
        for _ in range(50):
            port = rng.randrange(10000, lo)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): identifies a process beyond its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    now = _start_time(pid)
    if now is None or (start is not None and now != start):
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


class Stack:
    """One control plane rooted at ``state_dir``: start, stop, inspect, and run kubectl against it."""

    def __init__(self, state_dir: Path | str):
        self.state_dir = Path(state_dir).resolve()
        self.logs = self.state_dir / "logs"
        self.pki = self.state_dir / "pki"
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.state_file = self.state_dir / "state.json"
        self.state: dict = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    # ------------------------------------------------------------------ helpers
    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.state_file)

    def log_path(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def log_tail(self, component: str, lines: int = 40) -> str:
        """Last ``lines`` lines of a component's log, or a note saying why there is none."""
        path = self.log_path(component)
        if not path.exists():
            return f"(no log for {component} at {path})"
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        """Run kubectl against this cluster; raises StackError with stderr when ``check`` and it fails."""
        kubectl = self.state.get("bins", {}).get("kubectl") or shutil.which("kubectl") or "kubectl"
        proc = subprocess.run([kubectl, "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise StackError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def _spawn(self, component: str, argv: list[str], env: dict | None = None) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.log_path(component).open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.state_dir, start_new_session=True, env={**os.environ, **(env or {})})
        log.close()
        self.state.setdefault("pids", {})[component] = {"pid": proc.pid, "start": _start_time(proc.pid)}
        self._save()

    def _wait(self, component: str, check, timeout: float) -> None:
        """Poll ``check()`` until true; fail early, with the log tail, if the process died."""
        deadline = time.monotonic() + timeout
        rec = self.state["pids"][component]
        while True:
            if not _alive(rec["pid"], rec["start"]):
                raise StackError(f"{component} exited during start-up; log {self.log_path(component)}:\n"
                                 + self.log_tail(component, 25))
            try:
                if check():
                    return
            except (OSError, urllib.error.URLError, ssl.SSLError, StackError, subprocess.SubprocessError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{component} not ready after {timeout:.0f} s; log {self.log_path(component)}:\n"
                                 + self.log_tail(component, 25))
            time.sleep(0.2)

    def _https_ok(self, url: str, client_cert: bool = True) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if client_cert:
            ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        else:  # the controller-manager and scheduler serve a self-signed cert of their own
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return r.status == 200

    @staticmethod
    def _http_ok(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200

    # ------------------------------------------------------------------ lifecycle
    def running(self) -> dict[str, int]:
        """Components whose recorded PID is still the process we started."""
        return {c: r["pid"] for c, r in self.state.get("pids", {}).items() if _alive(r["pid"], r["start"])}

    def up(self, timeout: float = 120, progress=None, attempts: int = 3) -> Path:
        """Start every component in order and wait until each is ready; returns the kubeconfig path. A start that
        failed because a port was taken meanwhile ("address already in use") is retried on new ports."""
        for attempt in range(1, attempts + 1):
            try:
                return self._up_once(timeout, progress)
            except StackError as exc:
                if "address already in use" not in str(exc) or attempt == attempts:
                    raise
                (progress or (lambda msg: None))(f"a port was taken meanwhile; starting again on new ports "
                                                 f"(attempt {attempt + 1} of {attempts})")

    def _up_once(self, timeout: float, progress) -> Path:
        say = progress or (lambda msg: None)
        if self.running():
            raise StackError(f"a control plane already runs from {self.state_dir} (pids {self.running()}); "
                             "run `hack/cluster.sh down` first")
        t0 = time.monotonic()
        bins = {k: str(v) for k, v in find_binaries().items()}
        v = versions()
        kwok_dir = go_module_dir("sigs.k8s.io/kwok", v["KWOK_VERSION"])
        kuberay_dir = go_module_dir("github.com/ray-project/kuberay/ray-operator", v["KUBERAY_VERSION"])
        if self.state_dir.exists() and any(self.state_dir.iterdir()) and not self.state_file.exists():
            raise StackError(f"{self.state_dir} is not empty and holds no state.json: refusing to reuse it")
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)  # a stopped stack of ours: start from a clean etcd
        self.state_dir.mkdir(parents=True)
        ports = {k: free_port() for k in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kuberay-probe")}
        self.state = {"bins": bins, "ports": ports, "kubeconfig": str(self.kubeconfig), "pids": {}}
        self._save()
        write_pki(self.pki)
        server = f"https://127.0.0.1:{ports['apiserver']}"
        write_kubeconfig(self.kubeconfig, server, self.pki)
        try:
            self._up(bins, ports, kwok_dir, kuberay_dir, say, timeout)
        except BaseException:
            self.down()
            raise
        self.state["ready_s"] = round(time.monotonic() - t0, 2)
        self._save()
        say(f"ready in {self.state['ready_s']} s")
        return self.kubeconfig

    def _up(self, bins, ports, kwok_dir, kuberay_dir, say, timeout) -> None:
        p, pki, kc = ports, self.pki, str(self.kubeconfig)
        etcd_url = f"http://127.0.0.1:{p['etcd']}"
        peer_url = f"http://127.0.0.1:{p['etcd-peer']}"
        say("etcd")
        self._spawn("etcd", [
            bins["etcd"], "--name=moe-test", f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=moe-test={peer_url}", "--unsafe-no-fsync=true",
            "--log-level=warn", "--quota-backend-bytes=2147483648",
        ])
        self._wait("etcd", lambda: self._http_ok(etcd_url + "/health"), timeout)

        say("kube-apiserver")
        self._spawn("kube-apiserver", [
            bins["kube-apiserver"], f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={p['apiserver']}",
            f"--tls-cert-file={pki / 'server.crt'}", f"--tls-private-key-file={pki / 'server.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}", "--profiling=false", "--v=1",
        ])
        self._wait("kube-apiserver", lambda: self._https_ok(f"https://127.0.0.1:{p['apiserver']}/readyz"), timeout)

        say("kube-controller-manager, kube-scheduler, kwok")
        common = [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                  "--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false", "--v=1"]
        self._spawn("kube-controller-manager", [
            bins["kube-controller-manager"], *common, f"--secure-port={p['kcm']}",
            f"--cert-dir={self.state_dir / 'kcm-certs'}",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true",
        ])
        self._spawn("kube-scheduler", [
            bins["kube-scheduler"], *common, f"--secure-port={p['scheduler']}",
            f"--cert-dir={self.state_dir / 'scheduler-certs'}",
        ])
        stages = self.state_dir / "kwok-stages.yaml"
        stages.write_text("\n---\n".join((kwok_dir / s).read_text() for s in KWOK_STAGES))
        self._spawn("kwok", [
            bins["kwok"], f"--kubeconfig={kc}", f"--config={stages}", "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
            "--server-address=", "--node-ip=10.1.0.1", "--cidr=10.2.0.0/16",
        ], env={"HOME": str(self.state_dir)})

        say("KubeRay CRDs, fake nodes")
        # Plain HTTPS POSTs (the API server takes YAML as is): no kubectl start-up and discovery per call.
        # `create`, not apply: etcd is fresh at each `up`, and client-side apply would overflow the 256 KiB
        # last-applied annotation with these ~1 MB CRDs.
        for c in KUBERAY_CRDS:
            body = (kuberay_dir / "config/crd/bases" / f"ray.io_{c}.yaml").read_bytes()
            self._api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body, "application/yaml")
        for node in node_manifests():
            self._api("POST", "/api/v1/nodes", json.dumps(node).encode())
        say("CRDs and nodes created")
        self._wait("kube-apiserver", self._crds_established, timeout)
        say("ray-operator")
        self._spawn("ray-operator", [
            bins["ray-operator"], "--enable-leader-election=false", "--metrics-addr=0",
            f"--health-probe-bind-address=127.0.0.1:{p['kuberay-probe']}", "--log-stdout-encoder=console",
        ], env={"KUBECONFIG": kc})

        self._wait("kube-controller-manager", lambda: self._https_ok(
            f"https://127.0.0.1:{p['kcm']}/healthz", client_cert=False), timeout)
        self._wait("kube-scheduler", lambda: self._https_ok(
            f"https://127.0.0.1:{p['scheduler']}/healthz", client_cert=False), timeout)
        self._wait("kwok", self._nodes_ready, timeout)
        # kube-controller-manager's service-account controller works when `default` has its ServiceAccount.
        self._wait("kube-controller-manager", self._has_default_service_account, timeout)
        self._wait("ray-operator", lambda: self._http_ok(f"http://127.0.0.1:{p['kuberay-probe']}/readyz"), timeout)

    def _api(self, method: str, path: str, body: bytes | None = None,
             content_type: str = "application/json") -> dict:
        """One request to the API server as admin; returns the decoded JSON, raises StackError on HTTP errors."""
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        req = urllib.request.Request(f"https://127.0.0.1:{self.state['ports']['apiserver']}{path}", data=body,
                                     method=method, headers={"Content-Type": content_type,
                                                             "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise StackError(f"{method} {path} -> HTTP {e.code}: {e.read()[:300]!r}") from None

    def _crds_established(self) -> bool:
        items = self._api("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")["items"]
        established = {i["metadata"]["name"] for i in items
                       if any(c["type"] == "Established" and c["status"] == "True"
                              for c in (i.get("status") or {}).get("conditions") or [])}
        return all(f"{c}.ray.io" in established for c in KUBERAY_CRDS)

    def _nodes_ready(self) -> bool:
        nodes = self._api("GET", "/api/v1/nodes")["items"]
        ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                         for c in (n.get("status") or {}).get("conditions") or [])]
        return len(ready) == len(node_manifests())

    def _has_default_service_account(self) -> bool:
        try:
            return bool(self._api("GET", "/api/v1/namespaces/default/serviceaccounts/default"))
        except StackError:
            return False

    def down(self, grace: float = 10) -> list[str]:
        """Stop exactly the processes this stack started, clients first, then kube-apiserver, then etcd.

        Each gets SIGTERM, then SIGKILL after its grace period (s): kube-apiserver 3 s (its graceful shutdown
        waits on open watches for far longer, and etcd is wiped at the next ``up`` anyway), others ``grace``.
        """
        stopped = []
        pids = self.state.get("pids", {})
        order = [c for c in reversed(list(pids)) if c not in ("kube-apiserver", "etcd")]
        stages = [order, ["kube-apiserver"], ["etcd"]]
        for stage in stages:
            live = [c for c in stage if c in pids and _alive(pids[c]["pid"], pids[c]["start"])]
            for component in live:
                try:
                    os.kill(pids[component]["pid"], signal.SIGTERM)
                    stopped.append(component)
                except ProcessLookupError:
                    pass
            limit = min(grace, 3) if stage == ["kube-apiserver"] else grace
            deadline = time.monotonic() + limit
            for component in live:
                rec = pids[component]
                while _alive(rec["pid"], rec["start"]) and time.monotonic() < deadline:
                    _reap(rec["pid"])
                    time.sleep(0.05)
                if _alive(rec["pid"], rec["start"]):
                    os.kill(rec["pid"], signal.SIGKILL)
                    while _alive(rec["pid"], rec["start"]):
                        _reap(rec["pid"])
                        time.sleep(0.02)
                _reap(rec["pid"])
        if self.state:
            self.state["pids"] = {}
            self._save()
        return stopped

    def status(self) -> str:
        lines = [f"state dir  {self.state_dir}", f"kubeconfig {self.kubeconfig}"]
        running = self.running()
        for component, rec in self.state.get("pids", {}).items():
            lines.append(f"{component:24} pid {rec['pid']:>7}  {'running' if component in running else 'STOPPED'}")
        if not self.state.get("pids"):
            lines.append("nothing running")
        return "\n".join(lines)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (pytest fixture case), so no zombie stays."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def default_state_dir() -> Path:
    return Path(os.environ.get("MOE_CLUSTER_DIR", Path.home() / ".cache/moe-operator/cluster"))


def main(argv: list[str]) -> int:
    """CLI for hack/cluster.sh: ``up`` prints exactly one stdout line ``export KUBECONFIG=<path>``."""
    if len(argv) != 1 or argv[0] not in {"up", "down", "status"}:
        print("error: usage: hack/cluster.sh up|down|status", file=sys.stderr)
        return 2
    stack = Stack(default_state_dir())
    try:
        if argv[0] == "up":
            t0 = time.monotonic()
            kc = stack.up(progress=lambda m: print(f"[cluster +{time.monotonic() - t0:5.1f}s] {m}",
                                                    file=sys.stderr, flush=True))
            print(f"export KUBECONFIG={kc}")
        elif argv[0] == "down":
            stopped = stack.down()
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)
        else:
            print(stack.status())
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if not isinstance(e, MissingBinaries) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
