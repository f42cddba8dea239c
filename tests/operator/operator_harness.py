"""Run the real ``moe-operator`` (a subprocess) against the test control plane, and small polling helpers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "serving.moe-operator.io_moedeployments.yaml"


class Operator:
    """One ``moe-operator`` process watching the given namespaces; its log goes to ``log_path``."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], log_path: Path, drift_interval: float = 3.0):
        self.kubeconfig, self.namespaces, self.log_path = kubeconfig, namespaces, log_path
        self.drift_interval = drift_interval
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Operator":
        args = [sys.executable, "-m", "moe_operator.operator_main", "--metrics-port", "0",
                "--drift-interval", str(self.drift_interval),
                "--allow-runtime-url-annotation"]   # the rebalancer tests reach their runtime through the annotation
        for ns in self.namespaces:
            args += ["--namespace", ns]
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no operator log)"


def wait_for(what: str, probe, timeout: float = 60, interval: float = 0.3, on_fail=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    extra = f"\n{on_fail()}" if on_fail else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}{extra}")


def get(cluster, *args: str):
    proc = cluster.kubectl("get", *args, "-o", "json", check=False)
    if proc.returncode:
        return None
    return json.loads(proc.stdout)


def condition(obj: dict | None, type_: str) -> dict | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None
