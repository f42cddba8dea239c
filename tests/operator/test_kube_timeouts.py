"""Issue 14 item 8: a Kubernetes API call cannot hang the operator's loops for ever, and a loop that hangs anyway
turns the liveness probe red. The API server here is a TCP socket on 127.0.0.1 that accepts and never answers
(a half-open connection as the client sees it)."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import kopf
import pytest

from moe_operator.handlers import kube, leader, loops
from slow_http import call_in_thread


@pytest.fixture
def silent_apiserver(tmp_path, monkeypatch):
    """KUBECONFIG naming a server that accepts connections and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(srv.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{srv.getsockname()[1]}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    from kubernetes.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cfg))   # (read from env at import)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube, "_api", None)
    monkeypatch.setattr(kube, "_core", None)
    yield
    stop.set()
    for c in held:
        c.close()
    srv.close()


def test_an_api_call_to_a_silent_server_times_out(silent_apiserver, monkeypatch):
    monkeypatch.setattr(kube, "REQUEST_TIMEOUT", (0.5, 0.5), raising=False)
    kube.login()
    for call in (lambda: kube.get_moed("ns", "x"), lambda: kube.read_configmap("ns", "x")):   # custom and core
        returned, value, _ = call_in_thread(call, 20.0)
        assert returned, "a Kubernetes API call still waiting for a silent server after 20 s"
        assert isinstance(value, Exception) and "timed out" in str(value).lower(), value


def test_a_call_that_names_its_own_timeout_keeps_it(silent_apiserver, monkeypatch):
    monkeypatch.setattr(kube, "REQUEST_TIMEOUT", (60.0, 60.0), raising=False)
    kube.login()
    returned, value, _ = call_in_thread(
        lambda: kube.api().list_cluster_custom_object("g", "v1", "p", _request_timeout=1.0), 20.0)
    assert returned and isinstance(value, Exception), value


def test_liveness_fails_while_the_step_loop_hangs(monkeypatch):
    """The leader check (a Kubernetes call) hangs: the step loop stops stepping and the probe turns red."""
    hang = threading.Event()
    monkeypatch.setattr(loops, "STEP_S", 0.01)
    monkeypatch.setattr(loops, "STALL_S", 0.5)
    monkeypatch.setattr(loops, "LAST_STEP", None)
    monkeypatch.setattr(loops, "CONSUMERS", [])
    monkeypatch.setattr(leader, "is_active", lambda: hang.wait(60) or False)
    problems = []

    async def run():
        task = asyncio.get_running_loop().create_task(loops._loop())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not problems:
            await asyncio.sleep(0.05)
            if loops.health():
                problems.append(loops.health())
        hang.set()   # let the leader check's thread go, or asyncio.run waits for it at exit
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
    finally:
        hang.set()
    assert problems and "not stepped" in problems[0], problems
    with pytest.raises(kopf.PermanentError):
        loops.probe()


def test_liveness_fails_when_a_step_or_an_objects_tick_runs_too_long(monkeypatch):
    from concurrent.futures import Future

    monkeypatch.setattr(loops, "LAST_STEP", None)
    c = loops.Consumer("autoscaler", lambda now, bodies: 0)
    monkeypatch.setattr(loops, "CONSUMERS", [c])
    monkeypatch.setattr(loops, "_INFLIGHT", {})
    t = time.monotonic()
    assert loops.health(t) is None and loops.probe() == "ok"
    c.busy_since = t
    assert loops.health(t + loops.STALL_S - 1) is None
    assert "autoscaler step" in loops.health(t + loops.STALL_S + 1)
    c.busy_since = None
    loops._INFLIGHT[("autoscaler", ("ns", "m"))] = (Future(), [t])   # running since t, never done
    assert "ns/m" in loops.health(t + loops.STALL_S + 1)
