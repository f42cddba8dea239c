"""End to end: a real Prometheus scrapes `moectl up` (real Ray Serve, the tiny torch engine) under load from the
official openai client; moectl up's autoscaling loop reads Prometheus and scales ``engine-cpu`` in Serve.

Story, in one run (the app takes most of the time to start): idle -> hold at 1 replica; load -> a scale-up decision
and Serve runs 2 replicas while the first keeps answering; load stops and Prometheus is stopped -> holds at 2 well past
the scale-down window (missing metrics never scale down); Prometheus is back -> scale down to 1 after the window.
Timings are printed (``-s``) for docs/benchmarks/autoscaling.md.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import yaml

from require import need
from runtime_serving.serving_support import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny-moe.yaml"
START_TIMEOUT_S = 300
INTERVAL_S = 1.5          # --autoscale-interval
RATE_WINDOW_S = 4         # --rate-window: PromQL rate() over 4 s of 1 s scrapes
DOWN_WINDOW_S = 6         # scaleDownStabilizationSeconds
HOLD_S = DOWN_WINDOW_S + RATE_WINDOW_S + 4 * INTERVAL_S   # Prometheus down this long: well past the window
LINE = re.compile(r"^autoscale (\S+) cpu=(\d+) \(ready cpu=(\S+)\) (.*)$")

pytestmark = [pytest.mark.ray, pytest.mark.prometheus, pytest.mark.slow, pytest.mark.timeout(600)]


class Prometheus:
    """Debian's prometheus on a free loopback port, scraping one target every second; restartable on the same port."""

    def __init__(self, binary: str, target: str, tmp: Path):
        self.binary, self.tmp, self.port = binary, tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n- job_name: moe-runtime\n  static_configs:\n"
            f"  - targets: ['{target}']\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, f"--config.file={self.tmp / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={self.tmp / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.tmp / "prometheus.log", "a"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                pytest.fail(
                    f"prometheus exited with {self.proc.returncode}: "
                    f"{(self.tmp / 'prometheus.log').read_text()[-2000:]}"
                )
            time.sleep(0.2)
        pytest.fail("prometheus did not become ready in 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Up:
    """`moectl up` as a subprocess; its stdout lines are collected with their arrival time (monotonic s)."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.log = proc, log
        self.lines: list[tuple[float, str]] = []
        self.endpoint = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            if line.startswith("OpenAI endpoint:"):
                self.endpoint.set()

    def decisions(self, since: float = 0.0) -> list[tuple[float, int, str, str, str, float]]:
        """(arrival, desired cpu replicas, ready, hold|decide, reason, the loop's own time of the decision (Unix s,
        whole seconds)) of the decision lines since ``since``."""
        out = []
        for t, line in list(self.lines):
            m = LINE.match(line)
            if m and t >= since:
                reason = m.group(4)
                at = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
                out.append((t, int(m.group(2)), m.group(3), "hold" if reason.startswith("hold:") else "decide", reason,
                            at))
        return out

    def wait_decision(self, pred, since: float, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for d in self.decisions(since):
                if pred(d):
                    return d
            if self.proc.poll() is not None:
                pytest.fail(f"moectl up exited with {self.proc.returncode}\n{self.diagnostics()}")
            time.sleep(0.2)
        pytest.fail(f"no matching decision in {timeout_s} s\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        return (
            "stdout:\n" + "\n".join(line for _, line in self.lines[-25:]) + "\nstderr:\n" + self.log.read_text()[-3000:]
        )


def _spec(tmp: Path, prometheus_url: str) -> Path:
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["metadata"]["annotations"] = {"autoscaling.moe-operator.io/capacity": json.dumps(
        # a small modelled capacity, so that two client threads need a second replica
        {"cpu": {"prefillTps": 40.0, "decodeTps": 4.0, "cachedPrefillTps": 400.0}})}
    spec["spec"]["serving"] = {"maxBatchSize": 4, "maxQueue": 16}
    spec["spec"]["pools"][0].update(minReplicas=1, maxReplicas=2, coldStartSeconds=5)
    spec["spec"]["autoscaling"] = {
        "enabled": True, "intervalSeconds": 5,
        "metrics": {"prometheus": {"url": prometheus_url}, "staleAfterSeconds": 10},
        "slo": {"ttftP95Seconds": 60, "tpotP95Seconds": 10},
        "targetUtilization": 0.7, "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": DOWN_WINDOW_S,
        # the burst reserve is sized on the TTFT this machine happens to measure under the load: off, so that the
        # scale-down follows the token rates alone (its own story is tests/autoscaling)
        "burstReserveSeconds": 0,
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _load(base_url: str, stop: threading.Event, results: list, threads: int = 2) -> list[threading.Thread]:
    """``threads`` clients in a loop of short completions until ``stop`` (bounded by each request's timeout)."""
    import openai

    def worker() -> None:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="-", max_retries=0, timeout=60)
        while not stop.is_set():
            try:
                r = client.completions.create(model="tiny-moe", prompt="Count: one, two, three,", max_tokens=16)
                results.append(("ok", time.monotonic(), r.usage.completion_tokens))
            except openai.APIStatusError as exc:
                results.append((exc.status_code, time.monotonic(), 0))
            except openai.APIError as exc:
                results.append((type(exc).__name__, time.monotonic(), 0))

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    return ts


@pytest.mark.timing_sensitive
def test_prometheus_decisions_follow_load_up_and_down_and_hold_without_metrics(tmp_path):
    try:
        import openai  # noqa: F401
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        need("ray[serve] and openai", str(exc))
    binary = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)
    if binary is None:
        need("prometheus", "Debian's prometheus server (/usr/bin/prometheus) is not installed")

    port = free_port()
    prom = Prometheus(binary, f"127.0.0.1:{port}", tmp_path)
    prom.start()
    log = tmp_path / "up.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moe_operator.cli.main", "up", "-f", str(_spec(tmp_path, prom.url)),
             "--port", str(port), "--num-cpus", "4", "--autoscale-interval", str(INTERVAL_S),
             "--rate-window", str(RATE_WINDOW_S)],
            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    up = Up(proc, log)
    stop_load, results = threading.Event(), []
    try:
        t0 = time.monotonic()
        while not up.endpoint.wait(1.0) and proc.poll() is None and time.monotonic() - t0 < START_TIMEOUT_S:
            pass
        if not up.endpoint.is_set():
            pytest.fail(
                f"moectl up printed no endpoint (rc={proc.poll()}, {time.monotonic() - t0:.0f} s)\n{up.diagnostics()}"
            )
        started = time.monotonic()
        print(f"\nmoectl up ready after {started - t0:.1f} s")
        base = f"http://127.0.0.1:{port}"

        # idle: decisions from Prometheus (not holds) keep one replica
        idle = up.wait_decision(lambda d: d[3] == "decide", started, 60)
        assert idle[1] == 1, up.diagnostics()

        # load up -> scale up to 2, and Serve runs the second replica
        load_start = time.monotonic()
        workers = _load(base, stop_load, results)
        scale_up = up.wait_decision(lambda d: d[1] == 2 and d[3] == "decide", load_start, 90)
        assert "scale up" in scale_up[4], scale_up
        up_ready = up.wait_decision(lambda d: d[2] == "2", scale_up[0], 120)
        print(f"load start -> scale-up decision {scale_up[0] - load_start:.1f} s; "
              f"decision -> 2 replicas RUNNING {up_ready[0] - scale_up[0]:.1f} s")
        ok_during = [r for r in results if r[0] == "ok" and scale_up[0] <= r[1] <= up_ready[0]]
        stop_load.set()
        for w in workers:
            w.join(90)
        load_end = time.monotonic()
        # the first replica kept serving while Serve added the second (no restart of the app)
        assert ok_during or up_ready[0] - scale_up[0] < 3, "no request was served while scaling up"
        statuses = {r[0] for r in results}
        assert statuses <= {"ok", 429, 503}, statuses
        tokens = sum(r[2] for r in results)
        print(f"load: {len(results)} requests, {tokens} generated tokens in {load_end - load_start:.1f} s")

        # Prometheus stopped: missing metrics hold at 2 replicas well past the scale-down window
        prom.stop()
        stopped = time.monotonic()
        # a tick that was already querying may still succeed: the ones from INTERVAL_S on count
        up.wait_decision(lambda d: d[0] >= stopped + HOLD_S and len(up.decisions(stopped + INTERVAL_S)) >= 4,
                         stopped, HOLD_S + 90)
        during = up.decisions(stopped + INTERVAL_S)
        assert len(during) >= 4, up.diagnostics()
        assert all(d[1] == 2 for d in during), [d[1:] for d in during]
        assert all(d[3] == "hold" and "no metrics" in d[4] for d in during[1:]), [d[3:] for d in during]

        # Prometheus back: no load -> scale down to 1 once the need stayed low for the window
        prom.start()
        back = time.monotonic()
        down = up.wait_decision(lambda d: d[1] == 1 and d[3] == "decide", back, 90)
        assert "scale down" in down[4], down
        down_ready = up.wait_decision(lambda d: d[2] == "1", down[0], 90)
        print(f"prometheus back -> scale-down decision {down[0] - back:.1f} s "
              f"(load stopped {down[0] - load_end:.1f} s before); -> 1 replica RUNNING {down_ready[0] - down[0]:.1f} s")
        # the low need had to last the stabilization window after the last hold (the loop's clock, whole seconds)
        last_hold = [d for d in up.decisions(stopped) if d[3] == "hold" and d[0] <= down[0]][-1]
        assert down[5] - last_hold[5] >= DOWN_WINDOW_S, (last_hold[1:], down[1:])
        changes = [d for d in up.decisions(started) if d[4].startswith("scale ")]
        assert [d[1] for d in changes] == [2, 1], [d[1:] for d in changes]  # no flapping
        holds = [d for d in up.decisions(stopped) if d[3] == "hold"]
        print(f"{len(up.decisions(started))} decisions, {len(holds)} holds at cpu=2 while prometheus was down "
              f"({holds[-1][0] - holds[0][0]:.1f} s); replica changes: {[d[4][:60] for d in changes]}")
        assert httpx.get(base + "/health", timeout=30).status_code == 200
    finally:
        stop_load.set()
        prom.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
