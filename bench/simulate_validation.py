"""Simulator validation (issue 18): does `moectl simulate`'s per-replica model predict what a live fleet does?

A benchmark that prints figures (not a test). Steps:
  1. `moectl up` (127.0.0.1, a free port) of a spec derived from examples/tiny-moe.yaml with a fixed fleet of
     --replicas N (autoscaler off), the torch engine on CPU through local Ray Serve.
  2. Profiling run against that fleet: a lull of single requests of varied prompt lengths, then bursts of
     1, 2, 4, 8 requests; `calibrate.fit_profile` fits the per-replica ServingProfile (calibrated at N replicas:
     on a 2-core machine the replicas share the CPU, so per-replica capacity depends on the fleet size).
     Calibration and replay alternate: a profile is measured right before each replay (the second one on the
     fixed fleet after its replay, just before the autoscaled server starts), and each replay is predicted with
     its own profile, so a machine whose speed drifts over half an hour is measured next to the windows it
     predicts. Each replay is also predicted with the other profile: how far the calibration's own noise moves
     the figures (reported, not the acceptance).
  3. Replay a scaled-down shared trace for --duration seconds (a) against the fixed fleet, then (b) against a
     second `moectl up` with the autoscaler on (min 1, max --autoscale-max; capacity annotation = the
     calibration, so the live and the simulated autoscaler use the same capacity figures). The live
     autoscaler's decision lines (`autoscale <time> cpu=N (ready cpu=M) ...`) are recorded as they are printed.
  4. Simulate the same requests (arrival, prompt tokens, cached tokens the server reported, completion tokens
     actually generated) through the replica model with the calibrated profile: the fixed fleet as a constant
     schedule, the autoscaled one through `policy.decide` with the live spec's Settings, deciding at the live
     loop's phase and starting, as the live app does, at minReplicas.
  5. Print per 30 s window predicted vs measured: output tokens/s, TTFT p50/p95, TPOT p50, replicas; the
     acceptance lines (aggregate: median over the replay's windows of |predicted - measured| / measured, with the
     share of windows within the tolerance); write JSON + PNG to --out. A diagnostic (not the acceptance) then
     searches how much slower the calibrated profile would have to be to fit the fixed-fleet run.
  The machine's load average and the CPU share the server's processes got are recorded with every replay;
  `--from DIR` re-analyses a previous run's files without starting a server. Figures: docs/benchmarks.md,
  "Simulator validation (issue 18)"; what they mean for the model: docs/simulate.md, "How far to trust the model".

Each engine replica gets --torch-threads torch threads (default 1, MOE_TORCH_THREADS): one core per replica, as a
GPU replica owns its devices. Without it each replica's OpenMP pool takes both cores, so a prompt prefilled in
the lull (one request at a time, where the calibration measures it) runs alone, and the same prompt prefilled
while the other replica works shares the cores with four spinning threads: the 2026-12-06 runs measured prefill
under the replay ~1.75x slower than calibrated.

The engine (runtime/moe_runtime/engine/core.py) is prefill-first, not chunked: between two decode steps it
prefills every newly admitted prompt whole. The profile's ``prefill_chunk_tokens`` is therefore set to the
spec's maxContextTokens (a chunk as large as any prompt), so a pending prefill takes the engine nearly alone.

Usage:  .venv/bin/python bench/simulate_validation.py [--quick] [--duration 600] [--out /tmp/simulate-validation]
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "runtime")]

from moe_operator.autoscaling.from_spec import CAPACITY_ANNOTATION, pool_models_from_spec, settings_from_spec  # noqa: E402
from moe_operator.autoscaling.policy import History, decide  # noqa: E402
from moe_operator.autoscaling.simulate.calibrate import fit_profile  # noqa: E402
from moe_operator.autoscaling.simulate.replicas import (DEFAULT_MAX_QUEUE, ROUTERS,  # noqa: E402
                                                      ReplicaReplay, make_router)
from moe_operator.autoscaling.simulate.traces import Trace  # noqa: E402
from moe_operator.loadtest import replay as lt  # noqa: E402

DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "mooncake_conversation.jsonl"
TOL = {"throughput": 0.15, "ttft_p95": 0.30, "ttft_p50": 0.30, "tpot_p50": 0.20}   # ttft_p50: reported, no target
REPLICA_MATCH = 0.80
POOL = "cpu"


# ---------------------------------------------------------------------------------------------------- machine
def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _descendants(root: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _cpu_seconds(pids) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    s = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            s += (int(parts[11]) + int(parts[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return s


class Sampler(threading.Thread):
    """Every 5 s: load average and the CPU seconds used so far by the server's process tree (what share of the
    machine's 2 cores the system under test got)."""

    def __init__(self, root_pid: int):
        super().__init__(daemon=True)
        self.root, self.stop, self.samples = root_pid, threading.Event(), []

    def run(self):
        while not self.stop.is_set():
            pids = _descendants(self.root) | {self.root}
            self.samples.append((time.time(), os.getloadavg()[0], _cpu_seconds(pids)))
            self.stop.wait(5.0)

    def summary(self, t0: float, t1: float) -> dict:
        s = [x for x in self.samples if t0 <= x[0] <= t1 + 5]
        if len(s) < 2:
            return {}
        cores = os.cpu_count() or 1
        used = max(0.0, s[-1][2] - s[0][2])   # exited workers' CPU is lost: a lower bound
        return {"load1_mean": round(float(np.mean([x[1] for x in s])), 2),
                "load1_max": round(float(max(x[1] for x in s)), 2), "cores": cores,
                "server_cpu_s": round(used, 1), "wall_s": round(s[-1][0] - s[0][0], 1),
                "server_share_of_machine": round(used / ((s[-1][0] - s[0][0]) * cores), 3)}


# ---------------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`moectl up` in its own session; stdout lines are kept with the wall time they arrived."""

    def __init__(self, spec_path: Path, port: int, log_path: Path, no_autoscale: bool, torch_threads: int = 1):
        cmd = [str(ROOT / ".venv" / "bin" / "moectl"), "up", "-f", str(spec_path), "--host", "127.0.0.1",
               "--port", str(port), "--timeout", "900"]
        if no_autoscale:
            cmd.append("--no-autoscale")
        self.port, self.lines = port, []
        self.policy_sha1 = autoscaling_sha1()
        self.log = open(log_path, "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if torch_threads > 0:              # 0: torch's own default (all cores per replica)
            env["MOE_TORCH_THREADS"] = str(torch_threads)
        else:
            env.pop("MOE_TORCH_THREADS", None)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=str(ROOT),
                                     start_new_session=True, env=env)
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.tree: set[int] = set()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))
            self.log.write("[stdout] " + line)
            self.log.flush()
            if line.startswith("OpenAI endpoint:"):
                self.ready.set()

    def wait(self, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.ready.wait(2.0):
                self.tree = _descendants(self.proc.pid)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"moectl up exited with {self.proc.returncode}; see {self.log.name}")
        raise RuntimeError(f"moectl up not serving after {timeout_s:g} s; see {self.log.name}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> list[int]:
        """SIGINT (moectl up stops Serve and its Ray), then kill whatever of its process tree survived (returned)."""
        tree = self.tree | _descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        time.sleep(2)
        left = [p for p in tree if os.path.exists(f"/proc/{p}")]
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        self.log.close()
        return left


# ---------------------------------------------------------------------------------------------------- spec
def derive_spec(base: dict, *, lo: int, hi: int, interval: int, down_s: int, cold_start_s: int,
                capacity: dict | None) -> dict:
    spec = copy.deepcopy(base)
    pool = spec["spec"]["pools"][0]
    pool.update(minReplicas=lo, maxReplicas=hi, coldStartSeconds=cold_start_s)
    a = spec["spec"]["autoscaling"]
    a.update(enabled=True, intervalSeconds=interval, scaleDownStabilizationSeconds=down_s,
             scaleUpStabilizationSeconds=0)
    a.setdefault("metrics", {}).pop("scrape", None)     # moectl up scrapes its own /metrics on its own port
    if capacity is not None:
        spec.setdefault("metadata", {}).setdefault("annotations", {})[CAPACITY_ANNOTATION] = json.dumps(capacity)
    return spec


# ---------------------------------------------------------------------------------------------------- load
def _text(n: int, seed: int) -> str:
    return "".join(" " + w for w in lt._words([0x70726F66, seed], n))


def profiling_plan(quick: bool) -> list[lt.PlannedRequest]:
    """A lull (one request at a time, prompts of 32..1600 tokens, 16 tokens out) to fit the prefill rate, then
    bursts of 1, 2, 4, 8 simultaneous requests (200-token prompts, 48 tokens out) to fit the decode step."""
    plan, t, i = [], 0.0, 0
    lens = [32, 1600, 200, 1200, 400, 800, 100, 1400, 600, 1000, 300, 1500, 64, 900]
    for n in (lens[:8] if quick else lens):
        plan.append(lt.PlannedRequest(i, t, n, 0, 16, _text(n, i)))
        i, t = i + 1, t + 5.0
    for rep in range(1 if quick else 2):
        for k in (1, 2, 4, 8):
            for _ in range(k):
                plan.append(lt.PlannedRequest(i, t, 200, 0, 48, _text(200, i)))
                i += 1
            t += 6.0 + k * 1.5
    return plan


async def _replay(planned, url, max_in_flight, timeout_s):
    model = await lt.probe(url, None)
    return await lt.replay(planned, url, model, max_in_flight=max_in_flight, timeout_s=timeout_s)


def run_replay(planned, url, max_in_flight=64, timeout_s=180.0) -> tuple[lt.ReplayRun, float]:
    t0 = time.time()
    return asyncio.run(_replay(planned, url, max_in_flight, timeout_s)), t0


# ---------------------------------------------------------------------------------------------------- simulate
def trace_from_records(records: list[dict]) -> tuple[Trace, list[dict]]:
    """The requests the server saw (sent), as a Trace: arrival, computed and cached prompt tokens (server
    reported), completion tokens actually generated (asked for, when the request failed)."""
    sent = [r for r in records if r["sent_s"] is not None]
    sent.sort(key=lambda r: r["sent_s"])
    arr = np.array([r["sent_s"] for r in sent], dtype=float)
    prompt = np.array([r["prompt_tokens"] for r in sent], dtype=float)
    cached = np.array([min(r["cached_prompt_tokens"] or 0, r["prompt_tokens"]) for r in sent], dtype=float)
    out = np.array([r["completion_tokens"] if r["outcome"] == "ok" else r["max_tokens"] for r in sent], dtype=float)
    return Trace("replayed", arr, prompt - cached, cached, out), sent


class OursFrom:
    """policy.decide starting from the live app's History(desired=initial), as LocalAutoscaler does."""

    def __init__(self, pools, settings, initial):
        self.pools, self.settings, self.history = pools, settings, History(desired=dict(initial))

    def __call__(self, obs, replay, now):
        d = decide(obs, self.pools, self.settings, self.history, now)
        self.history = d.history
        return d.replicas


def simulate(trace: Trace, sent: list[dict], pools, settings, profile, policy, initial: dict, first_decision_s: float,
             drain_s: float = 900.0, router: str = "prefix-aware",
             max_queue: int = DEFAULT_MAX_QUEUE) -> tuple[list[dict], list[tuple[float, int]], float]:
    """Replica-model run: sim records (replay-shaped, one per sent request), asked replicas per second, wall.
    ``router``: the simulator's router (replicas.ROUTERS); the live torch ingress runs prefix-aware."""
    r = ReplicaReplay(trace, pools, settings.weights, settings.ttft_p95_s or np.inf, settings.tpot_p95_s or np.inf,
                      cold_start=True, profiles={POOL: profile}, router=make_router(router, max_queue=max_queue))
    r.fleet.cold_start = False
    r.apply(initial, 0.0)
    r.fleet.cold_start = True
    interval = settings.interval_s
    t, nxt, end = 0.0, first_decision_s, trace.duration_s + drain_s
    asked = []
    while t <= end:
        r.step(t)
        asked.append((t, r.fleet.asked[POOL]))
        t += 1.0
        if t > trace.duration_s and r.done:
            break
        if t >= nxt:
            r.apply(policy(r.observation(t, interval), r, t), t)
            nxt += interval
    recs = []
    for k, src in enumerate(sent):
        ttft, tpot, o = float(r.ttft[k]), float(r.tpot[k]), float(trace.output[k])
        a = float(trace.arrival_s[k])
        rec = {"i": src["i"], "arrival_s": a, "sent_s": a, "prompt_tokens": src["prompt_tokens"],
               "cached_prompt_tokens": int(trace.cached[k]), "cached_prompt_tokens_hint": 0,
               "completion_tokens": int(o), "max_tokens": int(o)}
        if math.isfinite(ttft):
            f = a + ttft
            e = f + (tpot * (o - 1) if o > 1 and math.isfinite(tpot) else 0.0)
            rec.update(first_token_s=f, end_s=e, ttft_s=ttft, tpot_s=tpot if o >= 2 and math.isfinite(tpot) else None,
                       outcome="ok" if math.isfinite(tpot) else "timeout")
        else:
            rec.update(first_token_s=None, end_s=None, ttft_s=None, tpot_s=None, outcome="timeout")
        recs.append(rec)
    return recs, asked, t


# ---------------------------------------------------------------------------------------------------- compare
def live_replicas(lines, t0: float) -> list[tuple[float, int, int | None]]:
    """(replay seconds, desired, ready) from the decision lines printed at or after t0 - 1 interval."""
    out = []
    for at, line in lines:
        if line.startswith("autoscale ") and f"{POOL}=" in line and "(ready" in line:
            parts = line.split()
            try:
                want = int(parts[2].split("=")[1])
                rs = line.split("(ready ", 1)[1].split(")")[0].split("=")[1]
                ready = None if rs == "?" else int(rs)
            except (IndexError, ValueError):
                continue
            out.append((at - t0, want, ready))
    return out


def step_at(points, t, default):
    v = default
    for x in points:
        if x[0] <= t:
            v = x[1]
        else:
            break
    return v


def rel(pred, meas):
    if pred is None or meas is None or meas == 0:
        return None
    return (pred - meas) / meas


def compare(meas_w, pred_w, duration, tol_key_map):
    """Per window rows and aggregates over the windows that start inside the replay's duration."""
    rows = []
    n = min(len(meas_w), len(pred_w))
    for k in range(n):
        m, p = meas_w[k], pred_w[k]
        rows.append({"start_s": m["start_s"], "in_replay": m["start_s"] < duration,
                     **{f"meas_{key}": m[key] for key in tol_key_map.values()},
                     **{f"pred_{key}": p[key] for key in tol_key_map.values()}})
    agg = {}
    for name, key in tol_key_map.items():
        errs = [rel(r[f"pred_{key}"], r[f"meas_{key}"]) for r in rows if r["in_replay"]]
        errs = [e for e in errs if e is not None]
        if not errs:
            agg[name] = {"windows": 0}
            continue
        a = np.abs(errs)
        agg[name] = {"windows": len(errs), "median_abs_error": round(float(np.median(a)), 3),
                     "mean_signed_error": round(float(np.mean(errs)), 3),
                     "fraction_within": round(float(np.mean(a <= TOL[name])), 3)}
    return rows, agg


def overall(meas_sum, pred_sum):
    return {"measured": meas_sum, "predicted": pred_sum, "error": None if not meas_sum else
            round((pred_sum - meas_sum) / meas_sum, 3)}


KEYS = {
    "throughput": "output_tokens_per_s",
    "ttft_p95": "ttft_p95_s",
    "ttft_p50": "ttft_p50_s",
    "tpot_p50": "tpot_p50_s",
}


def f(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"


def print_table(title, rows, reps=None):
    print(f"\n{title}")
    hdr = f"{'window':>8} | {'out tok/s meas':>14} {'pred':>7} | {'TTFT p50 meas':>13} {'pred':>6} | " \
          f"{'TTFT p95 meas':>13} {'pred':>6} | {'TPOT p50 meas':>13} {'pred':>6}"
    if reps:
        hdr += f" | {'replicas live (ready)':>21} {'sim':>4}"
    print(hdr)
    for k, r in enumerate(rows):
        tag = "" if r["in_replay"] else " drain"
        line = (
            f"{r['start_s']:>7.0f}s | {f(r['meas_output_tokens_per_s'], 1):>14} "
            f"{f(r['pred_output_tokens_per_s'], 1):>7} | "
            f"{f(r['meas_ttft_p50_s']):>13} {f(r['pred_ttft_p50_s']):>6} | {f(r['meas_ttft_p95_s']):>13} "
            f"{f(r['pred_ttft_p95_s']):>6} | {f(r['meas_tpot_p50_s'], 3):>13} {f(r['pred_tpot_p50_s'], 3):>6}"
        )
        if reps and k < len(reps):
            lv, rd, sv = reps[k]
            line += f" | {lv:>14} ({'?' if rd is None else rd}) {sv:>9}"
        print(line + tag)


def acceptance(label, agg, ov, rep_match=None):
    lines = []
    th = agg["throughput"]
    if th.get("windows"):
        ok = th["median_abs_error"] <= TOL["throughput"]
        lines.append(f"[{label}] throughput within 15% (median |error| over {th['windows']} windows): "
                     f"{th['median_abs_error']:.1%}, {th['fraction_within']:.0%} of windows within; overall "
                     f"{ov['throughput']['error']:+.1%} -> {'PASS' if ok else 'FAIL'}")
    for name, label2, tol in (("ttft_p95", "TTFT p95 within 30%", 0.30), ("tpot_p50", "TPOT p50 within 20%", 0.20)):
        a = agg[name]
        if a.get("windows"):
            ok = a["median_abs_error"] <= tol
            o = ov.get(name, {}).get("error")
            lines.append(
                f"[{label}] {label2} (median |error| over {a['windows']} windows): {a['median_abs_error']:.1%} "
                f"(signed mean {a['mean_signed_error']:+.1%}), {a['fraction_within']:.0%} of windows within; "
                f"whole run {'-' if o is None else f'{o:+.1%}'} -> {'PASS' if ok else 'FAIL'}"
            )
    if rep_match is not None:
        lines.append(f"[{label}] replica counts match in >= 80% of windows: {rep_match:.0%} -> "
                     f"{'PASS' if rep_match >= REPLICA_MATCH else 'FAIL'}")
    return lines


def autoscaling_sha1() -> dict:
    """sha1 of the policy files as they are now: others edit them concurrently, so the live loop (imported when
    `moectl up` starts) and the simulation (imported by this process) may not run the same policy."""
    import hashlib
    d = ROOT / "operator" / "moe_operator" / "autoscaling"
    return {n: hashlib.sha1((d / n).read_bytes()).hexdigest()[:12] for n in ("policy.py", "limits.py", "burst.py")
            if (d / n).is_file()}


def git_state() -> dict:
    def run(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.rstrip()
    return {
        "commit": run("rev-parse", "--short", "HEAD").strip(),
        "policy_files_sha1": autoscaling_sha1(),
        "dirty_policy_files": [
            line[3:] for line in run("status", "--porcelain", "operator/moe_operator/autoscaling").splitlines()
        ],
    }


# ---------------------------------------------------------------------------------------------------- main
def live_run(label, srv, planned, args, fixed_n, out_dir) -> dict:
    """Replay against the live server; the replay document (+ the live decisions and machine load) is saved."""
    print(f"\n== {label}: replaying {len(planned)} requests for {args.duration:g} s against {srv.url} "
          f"(load {loadavg()})", flush=True)
    sampler = Sampler(srv.proc.pid)
    sampler.start()
    run, t0 = run_replay(planned, srv.url, args.max_in_flight, args.timeout)
    t1 = time.time()
    time.sleep(1.0)
    sampler.stop.set()
    doc = lt.build_doc(run, trace_file=str(args.trace), trace=Trace("x", np.zeros(1), *[np.zeros(1)] * 3),
                       planned=planned, base_url=srv.url, speedup=args.speedup, scale=args.scale_tokens,
                       duration_s=args.duration, max_prompt_tokens=args.max_prompt_tokens,
                       max_in_flight=args.max_in_flight, timeout_s=args.timeout, window_s=args.window,
                       replicas=fixed_n or 1, ignore_eos=False)
    doc["machine"] = sampler.summary(t0, t1)
    doc["machine_samples"] = [(round(t - t0, 1), round(load, 2), round(c, 2)) for t, load, c in sampler.samples]
    doc["live_decisions"] = live_replicas(srv.lines, t0) if fixed_n is None else []
    doc["fixed_replicas"] = fixed_n
    doc["policy_files_at_server_start"] = srv.policy_sha1
    (out_dir / f"replay-{label}.json").write_text(json.dumps(doc, indent=1))
    return doc


def analyse(label, doc, args, profile, pools, settings, initial, fixed_n, quiet=False):
    """Simulate the replayed requests and compare per window."""
    records, machine, live = doc["requests"], doc.get("machine", {}), [tuple(x) for x in doc.get("live_decisions", [])]
    wall_s = doc["summary"]["wall_s"]
    trace, sent = trace_from_records(records)
    if fixed_n is None:
        ticks = [x[0] for x in live if x[0] > 0]
        first = ticks[0] if ticks else settings.interval_s
        first = first - settings.interval_s * math.floor((first - 1e-9) / settings.interval_s)
        policy = OursFrom(pools, settings, initial)
    else:
        first = settings.interval_s
        policy = lambda obs, r, now: {POOL: fixed_n}   # noqa: E731 (constant schedule)
    sim_recs, asked, sim_wall = simulate(trace, sent, pools, settings, profile, policy, initial, max(1.0, first),
                                         router=args.router, max_queue=args.max_queue)
    horizon = max(wall_s, sim_wall)
    meas_w, meas_s = lt.summarize(records, args.window, horizon)
    pred_w, pred_s = lt.summarize(sim_recs, args.window, horizon)
    rows, agg = compare(meas_w, pred_w, args.duration, KEYS)
    ov = {"throughput": overall(meas_s["completion_tokens"], pred_s["completion_tokens"]),
          "ttft_p95": overall(meas_s["ttft_p95_s"], pred_s["ttft_p95_s"]),
          "ttft_p50": overall(meas_s["ttft_p50_s"], pred_s["ttft_p50_s"]),
          "tpot_p50": overall(meas_s["tpot_p50_s"], pred_s["tpot_p50_s"])}
    # output tokens within the replay's windows (drain excluded) for the overall throughput line
    n_in = sum(1 for r in rows if r["in_replay"])
    mt = sum(r["meas_output_tokens_per_s"] for r in rows[:n_in]) * args.window
    pt = sum(r["pred_output_tokens_per_s"] for r in rows[:n_in]) * args.window
    ov["throughput"] = overall(round(mt, 1), round(pt, 1))
    reps, rep_match = None, None
    if fixed_n is None:
        reps = []
        for r in rows:
            end = r["start_s"] + args.window
            lv = step_at([(x[0], x[1]) for x in live], end, initial[POOL])
            rd = step_at([(x[0], x[2]) for x in live], end, None)
            sv = step_at(asked, end - 1, initial[POOL])
            reps.append((lv, rd, sv))
        inside = [x for x, r in zip(reps, rows) if r["in_replay"]]
        rep_match = float(np.mean([a == c for a, _, c in inside])) if inside else None
    samples = doc.get("machine_samples") or []
    for r in rows:   # the machine's 1-min load average sampled inside the window (another program's load included)
        ls = [load for t, load, _ in samples if r["start_s"] <= t < r["start_s"] + args.window]
        r["load1"] = round(float(np.mean(ls)), 1) if ls else None
    outcomes = {o: meas_s[o] for o in lt.OUTCOMES}
    acc = acceptance(label, agg, ov, rep_match)
    if not quiet:
        print_table(
            f"{label}: predicted (replica model, calibrated) vs measured, {args.window:g} s windows", rows, reps
        )
        print(f"measured outcomes {outcomes}; send lag p95 {meas_s['send_lag_p95_s']} s; machine {machine}")
        for line in acc:
            print(line)
    return {"label": label, "requests": len(sent), "measured_summary": meas_s, "predicted_summary": pred_s,
            "windows": rows, "aggregates": agg, "overall": ov, "replicas": reps, "replica_match": rep_match,
            "live_decisions": live, "machine": machine, "acceptance": acc,
            "first_decision_s": first, "replay_wall_s": wall_s, "sim_wall_s": sim_wall}


def plot(results, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("output_tokens_per_s", "output tok/s"), ("ttft_p50_s", "TTFT p50 s"), ("ttft_p95_s", "TTFT p95 s"),
              ("tpot_p50_s", "TPOT p50 s")]
    has_reps = any(r["replicas"] for r in results)
    nrow = len(panels) + (1 if has_reps else 0)
    fig, axes = plt.subplots(nrow, len(results), figsize=(6.5 * len(results), 2.2 * nrow), squeeze=False, sharex="col")
    for c, res in enumerate(results):
        x = [r["start_s"] + 15 for r in res["windows"]]
        for k, (key, name) in enumerate(panels):
            ax = axes[k][c]
            m = [np.nan if r[f"meas_{key}"] is None else r[f"meas_{key}"] for r in res["windows"]]
            p = [np.nan if r[f"pred_{key}"] is None else r[f"pred_{key}"] for r in res["windows"]]
            ax.plot(x, m, "o-", label="measured")
            ax.plot(x, p, "s--", label="predicted")
            ax.set_ylabel(name)
            if k == 0:
                ax.set_title(res["label"])
                ax.legend(fontsize=8)
        if has_reps:
            ax = axes[-1][c]
            if res["replicas"]:
                ax.step(x, [a for a, _, _ in res["replicas"]], where="mid", label="live (asked)")
                ax.step(
                    x, [np.nan if b is None else b for _, b, _ in res["replicas"]], where="mid", label="live (ready)"
                )
                ax.step(x, [s for _, _, s in res["replicas"]], "--", where="mid", label="simulated")
                ax.legend(fontsize=8)
            ax.set_ylabel("replicas")
        axes[-1][c].set_xlabel("seconds (30 s windows)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def calibrate(records, args, max_batch, max_ctx):
    profile, cal = fit_profile(records, max_batch, max_batch * max_ctx, args.replicas)
    profile = replace(profile, prefill_chunk_tokens=max_ctx)   # prefill-first engine: a chunk = a whole prompt
    cap = {POOL: {"prefillTps": round(profile.prefill_tps, 1), "decodeTps": round(profile.decode_tps(max_batch), 1),
                  "cachedPrefillTps": round(profile.cached_prefill_tps, 1)}}
    print(
        f"calibrated at {args.replicas} replicas: prefill {profile.prefill_tps:.0f} tok/s (intercept "
        f"{cal['prefill']['intercept_s']:.3f} s, {cal['prefill']['points']} points, r2 {cal['prefill']['r2']}), cached "
        f"{profile.cached_prefill_tps:.0f} tok/s ({cal['prefill']['cached_source']}), step "
        f"{profile.step_base_s * 1e3:.1f} ms "
        f"+ {profile.step_per_seq_s * 1e3:.2f} ms/seq ({cal['decode']['points']} points, b "
        f"{cal['decode']['concurrency_min']}"
        f"..{cal['decode']['concurrency_max']}, r2 {cal['decode']['r2']}); chunk = {max_ctx} tokens (prefill-first); "
        f"capacity annotation {json.dumps(cap)}",
        flush=True,
    )
    info = {"report": cal, "profile": {k: getattr(profile, k) for k in (
        "max_batch", "kv_tokens", "prefill_tps", "cached_prefill_tps", "step_base_s", "step_per_seq_s",
        "prefill_chunk_tokens", "ttft_overhead_s")}, "capacity_annotation": cap, "replicas": args.replicas}
    return profile, cap, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of trace replayed (default 600)")
    ap.add_argument("--speedup", type=float, default=0.5)
    ap.add_argument("--scale-tokens", type=float, default=0.05)
    ap.add_argument("--max-prompt-tokens", type=int, default=1500)
    ap.add_argument("--replicas", type=int, default=2, help="fixed fleet size (and the calibration's)")
    ap.add_argument("--autoscale-max", type=int, default=2)
    ap.add_argument("--interval", type=int, default=15)
    ap.add_argument("--scale-down-stabilization", type=int, default=60)
    ap.add_argument("--cold-start", type=int, default=30, help="pool coldStartSeconds in the derived spec")
    ap.add_argument("--max-in-flight", type=int, default=64)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch threads per engine replica (MOE_TORCH_THREADS; default 1: one core per replica; "
                         "0: torch's default)")
    ap.add_argument("--router", default="prefix-aware", choices=ROUTERS,
                    help="the simulator's router (default prefix-aware: what the live torch ingress runs)")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--skip-autoscaled", action="store_true")
    ap.add_argument("--skip-fixed", action="store_true", help="profile on the fixed fleet but do not replay it")
    ap.add_argument("--quick", action="store_true", help="120 s replays and a shorter profiling run")
    ap.add_argument("--from", dest="from_dir", type=Path, default=None,
                    help="no live run: re-analyse the replay JSONs a previous run wrote to this directory")
    ap.add_argument("--out", type=Path, default=Path("/tmp/simulate-validation"))
    args = ap.parse_args(argv)
    if args.torch_threads < 0:
        ap.error("--torch-threads must be >= 0 (0: torch's default)")
    if args.quick:
        args.duration = min(args.duration, 120.0)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="simval-"))
    base = yaml.safe_load((ROOT / "examples" / "tiny-moe.yaml").read_text())
    max_batch = int(base["spec"]["serving"]["maxBatchSize"])
    max_ctx = int(base["spec"]["model"]["maxContextTokens"])
    args.max_queue = int(base["spec"]["serving"].get("maxQueue", DEFAULT_MAX_QUEUE))   # the live router's limit
    started = time.time()
    report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "git": git_state(),
              "load_at_start": loadavg(), "engine_prefill": "prefill-first (whole prompt between decode steps): "
              f"prefill_chunk_tokens = maxContextTokens = {max_ctx}", "results": []}
    print(f"simulate validation: trace {args.trace.name} x{args.speedup:g}, tokens x{args.scale_tokens:g}, prompts "
          f"<= {args.max_prompt_tokens}, {args.duration:g} s; commit {report['git']['commit']} (autoscaling files "
          f"modified in the tree: {report['git']['dirty_policy_files'] or 'none'}); load {loadavg()}", flush=True)
    docs: dict[str, dict] = {}
    fixed_label = f"fixed-{args.replicas}"
    profile2 = None      # the profile measured right before the autoscaled replay (None: the first one serves both)

    def auto_spec(cap):
        spec_auto = derive_spec(base, lo=1, hi=args.autoscale_max, interval=args.interval,
                                down_s=args.scale_down_stabilization, cold_start_s=args.cold_start, capacity=cap)
        p_auto = tmp / "autoscaled.yaml"
        p_auto.write_text(yaml.safe_dump(spec_auto))
        return p_auto

    if args.from_dir is not None:
        prof = json.loads((args.from_dir / "profile-replay.json").read_text())
        profile, cap, report["calibration"] = calibrate(prof["requests"], args, max_batch, max_ctx)
        prof2 = args.from_dir / "profile-replay-2.json"
        if prof2.is_file():     # runs before the alternation had one profile for both replays
            profile2, cap, report["calibration_2"] = calibrate(
                json.loads(prof2.read_text())["requests"], args, max_batch, max_ctx)
        for label in (fixed_label, "autoscaled"):
            f_ = args.from_dir / f"replay-{label}.json"
            if f_.is_file():
                docs[label] = json.loads(f_.read_text())
        p_auto = auto_spec(cap)
    else:
        _, planned = lt.plan_requests(
            args.trace, args.speedup, args.scale_tokens, args.duration, args.max_prompt_tokens
        )
        servers = []
        try:
            # ---- fixed fleet: profile, calibrate, replay
            spec_fixed = derive_spec(base, lo=args.replicas, hi=args.replicas, interval=args.interval,
                                     down_s=args.scale_down_stabilization, cold_start_s=args.cold_start, capacity=None)
            p_fixed = tmp / "fixed.yaml"
            p_fixed.write_text(yaml.safe_dump(spec_fixed))
            srv = Server(p_fixed, free_port(), args.out / "moectl-up-fixed.log", no_autoscale=True,
                         torch_threads=args.torch_threads)
            servers.append(srv)
            t_up = time.time()
            srv.wait(900)
            print(f"fixed fleet of {args.replicas} up in {time.time() - t_up:.0f} s at {srv.url}", flush=True)
            prof_plan = profiling_plan(args.quick)
            print(
                f"profiling: {len(prof_plan)} requests over {prof_plan[-1].arrival_s:.0f} s (load {loadavg()})",
                flush=True,
            )
            prun, _ = run_replay(prof_plan, srv.url, 64, args.timeout)
            (args.out / "profile-replay.json").write_text(json.dumps({"requests": prun.records}, indent=1))
            profile, cap, report["calibration"] = calibrate(prun.records, args, max_batch, max_ctx)
            report["calibration"]["load"] = loadavg()
            p_auto = auto_spec(cap)
            if not args.skip_fixed:
                docs[fixed_label] = live_run(fixed_label, srv, planned, args, args.replicas, args.out)
            if not args.skip_autoscaled:
                # the autoscaled replay's own profile, measured next to it (same fleet size as the first)
                print(f"profiling again before the autoscaled replay (load {loadavg()})", flush=True)
                prun2, _ = run_replay(prof_plan, srv.url, 64, args.timeout)
                (args.out / "profile-replay-2.json").write_text(json.dumps({"requests": prun2.records}, indent=1))
                profile2, cap, report["calibration_2"] = calibrate(prun2.records, args, max_batch, max_ctx)
                report["calibration_2"]["load"] = loadavg()
                p_auto = auto_spec(cap)
            left = srv.stop()
            servers.remove(srv)
            print(f"fixed fleet stopped ({len(left)} leftover processes killed)", flush=True)
            if not args.skip_autoscaled:
                srv = Server(p_auto, free_port(), args.out / "moectl-up-autoscaled.log", no_autoscale=False,
                             torch_threads=args.torch_threads)
                servers.append(srv)
                t_up = time.time()
                srv.wait(900)
                print(f"autoscaled fleet (1..{args.autoscale_max}) up in {time.time() - t_up:.0f} s; interval "
                      f"{args.interval} s, scale-down stabilization {args.scale_down_stabilization} s", flush=True)
                docs["autoscaled"] = live_run("autoscaled", srv, planned, args, None, args.out)
                lines = [line for _, line in srv.lines if line.startswith("autoscale")]
                (args.out / "autoscaler-decisions.txt").write_text("\n".join(lines) + "\n")
                left = srv.stop()
                servers.remove(srv)
                print(f"autoscaled fleet stopped ({len(left)} leftover processes killed)", flush=True)
        finally:
            for s_ in servers:
                s_.stop()
    from moe_operator.api import load_manifest
    manifest = load_manifest(str(p_auto))
    pools, weights = pool_models_from_spec(manifest)
    settings = settings_from_spec(manifest.spec.autoscaling, weights)
    if fixed_label in docs:
        fixed_pools = [replace(pools[0], min_replicas=args.replicas, max_replicas=args.replicas)]
        report["results"].append(analyse(fixed_label, docs[fixed_label], args, profile, fixed_pools, settings,
                                         {POOL: args.replicas}, args.replicas))
    if "autoscaled" in docs:
        report["results"].append(analyse("autoscaled", docs["autoscaled"], args, profile2 or profile, pools, settings,
                                         {POOL: 1}, None))
    if profile2 is not None:
        # Sensitivity, not the acceptance: each replay predicted with the other replay's profile. The spread
        # between the two is what the calibration's own noise (two profiling runs on one machine, minutes
        # apart) does to the figures.
        print("\n(sensitivity, not the acceptance) each replay predicted with the other replay's profile:")
        cross = []
        if fixed_label in docs:
            fixed_pools = [replace(pools[0], min_replicas=args.replicas, max_replicas=args.replicas)]
            cross.append(analyse(f"{fixed_label} with profile 2", docs[fixed_label], args, profile2, fixed_pools,
                                 settings, {POOL: args.replicas}, args.replicas, quiet=True))
        if "autoscaled" in docs:
            cross.append(analyse("autoscaled with profile 1", docs["autoscaled"], args, profile, pools, settings,
                                 {POOL: 1}, None, quiet=True))
        for res in cross:
            for line in res["acceptance"]:
                print("  " + line)
        report["cross_profile"] = [{k: res[k] for k in ("label", "aggregates", "overall", "acceptance")}
                                   for res in cross]
    # Diagnostic, not the acceptance: how much slower than in the profiling run would the engine have to be for
    # the model to match the measured run? Prefill rates divided by kp, decode step times multiplied by kd,
    # searched on a grid on the fixed-fleet run. kp, kd near 1 with large errors: the model is wrong; k well
    # above 1 with small errors there: the model's structure holds and the engine ran that much slower under the
    # trace's load than under the profiling run's (per-request work on a contended CPU: Serve's proxy and
    # ingress streaming every token, the replicas and the other processes sharing 2 cores).
    if fixed_label in docs:
        fixed_pools = [replace(pools[0], min_replicas=args.replicas, max_replicas=args.replicas)]
        best = None
        grid = np.round(np.arange(1.0, 4.01, 0.25), 2)
        for kp in grid:
            for kd in grid:
                pk = replace(
                    profile,
                    prefill_tps=profile.prefill_tps / kp,
                    cached_prefill_tps=profile.cached_prefill_tps / kp,
                    step_base_s=profile.step_base_s * kd,
                    step_per_seq_s=profile.step_per_seq_s * kd,
                )
                res = analyse(f"{fixed_label} prefill /{kp:g} decode x{kd:g}", docs[fixed_label], args, pk, fixed_pools,
                              settings, {POOL: args.replicas}, args.replicas, quiet=True)
                a = res["aggregates"]
                score = max(a["ttft_p95"].get("median_abs_error", 9), a["tpot_p50"].get("median_abs_error", 9))
                if best is None or score < best[0]:
                    best = (score, float(kp), float(kd), res)
        score, kp, kd, res = best
        res["diagnostic"] = True
        print(f"\n(diagnostic, not the acceptance) the calibrated profile with prefill {kp:g}x slower and decode steps "
              f"{kd:g}x longer fits the fixed-fleet run best:")
        for line in res["acceptance"]:
            print("  " + line)
        report["slowdown_diagnostic"] = {"prefill_slowdown": kp, "decode_slowdown": kd, "aggregates": res["aggregates"],
                                         "overall": res["overall"]}
    report["load_at_end"] = loadavg()
    report["wall_s"] = round(time.time() - started, 1)
    (args.out / "simulate-validation.json").write_text(json.dumps(report, indent=1, default=str))
    if report["results"]:
        plot([r for r in report["results"] if not r.get("diagnostic")], args.out / "simulate-validation.png")
    print("\n== acceptance (issue 18)")
    for res in report["results"]:
        if res.get("diagnostic"):
            continue
        for line in res["acceptance"]:
            print(line)
    print(
        f"\nwrote {args.out}/simulate-validation.json, .png, replay-*.json; {report['wall_s']:.0f} s; load now "
        f"{loadavg()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
