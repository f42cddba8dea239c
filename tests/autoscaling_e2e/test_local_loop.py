"""LocalAutoscaler (the loop `moectl up` runs) on constructed observations: apply only on change, hold on missing
metrics, retry a failed apply, ready replicas taken from Serve rather than from the merged /metrics series."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from moe_operator.autoscaling.local_loop import LocalAutoscaler, decision_line
from moe_operator.autoscaling.model import PoolModel, Settings
from moe_operator.autoscaling.observation import Observation

POOL = PoolModel(name="cpu", price_per_hour=0.05, capacity=10.0, min_replicas=1, max_replicas=3, cold_start_s=5.0,
                 tpot_at_capacity_s=0.1, prefill_tps=100.0)
SETTINGS = Settings(interval_s=1.0, stale_after_s=10.0, ttft_p95_s=None, tpot_p95_s=None, max_cost_per_million=None,
                    max_hourly_cost=None, target_utilization=0.7, scale_up_stabilization_s=0.0,
                    scale_down_stabilization_s=3.0, scale_to_zero=False, idle_s=60.0)


class Source:
    """Replays a list of generated-token rates (None = metrics missing)."""

    def __init__(self, rates):
        self.rates, self.now, self.last_error = list(rates), 0.0, None

    def observe(self):
        rate = self.rates.pop(0)
        if rate is None:
            self.last_error = "prometheus: connection refused"
            return None
        self.last_error = None
        return Observation(observed_at=self.now, tokens_per_s={"prompt": 0.0, "cached_prompt": 0.0, "generated": rate},
                           requests_per_s=rate / 10, queue_depth=0.0, ready={"cpu": 1})


def run(rates, ready=lambda: {"cpu": 1}, apply=None):
    src, applied, lines = Source(rates), [], []
    loop = LocalAutoscaler(src, [POOL], SETTINGS, ready=ready, apply=apply or applied.append, initial={"cpu": 1},
                           emit=lines.append)
    for t in range(len(rates)):
        src.now = 1000.0 + t
        loop.tick(1000.0 + t)
    return loop, applied, lines


def test_scales_up_with_load_and_down_after_the_window_applying_only_changes():
    loop, applied, lines = run([0, 0, 12, 12, 12, 0, 0, 0, 0, 0, 0])
    assert applied == [{"cpu": 2}, {"cpu": 1}]
    assert [t.changed for t in loop.ticks].count(True) == 2
    up = next(i for i, t in enumerate(loop.ticks) if t.changed)
    down = max(i for i, t in enumerate(loop.ticks) if t.changed)
    assert up == 2 and down - 5 >= SETTINGS.scale_down_stabilization_s  # the dip had to last the window
    assert len(lines) == len(loop.ticks) and all(line.startswith("autoscale ") for line in lines)
    assert "cpu=2 (ready cpu=1) scale up" in lines[up]


def test_missing_metrics_hold_and_never_scale_down():
    loop, applied, lines = run([12, None, None, None, None, None, None])
    assert applied == [{"cpu": 2}]
    assert all(t.decision.held and t.decision.replicas == {"cpu": 2} for t in loop.ticks[1:])
    assert "(ready cpu=1) hold: no metrics" in lines[-1] and "connection refused" in lines[-1]


def test_ready_comes_from_serve_not_from_the_metric_series():
    loop, _, _ = run([12, 12], ready=lambda: {"cpu": 3})
    assert all(t.observation.ready == {"cpu": 3} for t in loop.ticks)


def test_a_failed_apply_is_retried_next_tick():
    calls = []

    def apply(replicas):
        calls.append(replicas)
        if len(calls) == 1:
            raise RuntimeError("controller busy")

    loop, _, lines = run([12, 12, 12], apply=apply)
    assert calls == [{"cpu": 2}, {"cpu": 2}]
    assert "failed: controller busy" in lines[0] and loop.applied == {"cpu": 2}


def test_decision_line_says_unknown_ready():
    loop, _, _ = run([0])
    assert "(ready cpu=?)" in decision_line(0.0, loop.ticks[0].decision, None)


def _up_args(**kw):
    base = dict(no_autoscale=False, autoscale_interval=None, metrics_url=None, rate_window=60, host="127.0.0.1",
                port=8123)
    return argparse.Namespace(**{**base, **kw})


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny-moe.yaml"


def test_moectl_up_builds_the_loop_from_the_spec_and_its_flags():
    from moe_operator.autoscaling.sources.prometheus import PrometheusSource
    from moe_operator.autoscaling.sources.scrape import ScrapeSource
    from moe_operator.cli.up import autoscaler_for, serve_config_for

    _, _, config = serve_config_for(str(EXAMPLE))
    loop, interval = autoscaler_for(str(EXAMPLE), _up_args(), config)
    assert interval == 30.0 and loop.applied == {"cpu": 1}            # intervalSeconds, deployed num_replicas
    assert isinstance(loop.source, ScrapeSource) and loop.source.url == "http://127.0.0.1:8123/metrics"
    loop, interval = autoscaler_for(
        str(EXAMPLE), _up_args(autoscale_interval=2.5, metrics_url="http://127.0.0.1:9/"), config
    )
    assert interval == 2.5 and isinstance(loop.source, PrometheusSource) and loop.source.window == "60s"
    assert autoscaler_for(str(EXAMPLE), _up_args(no_autoscale=True), config) == (None, 0.0)


def test_moectl_up_bad_interval_is_one_error_line_and_exit_2():
    p = subprocess.run([sys.executable, "-m", "moe_operator.cli.main", "up", "-f", str(EXAMPLE), "--port", "8124",
                        "--autoscale-interval", "0"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--autoscale-interval" in lines[0], p.stderr


def test_after_an_outage_a_low_need_must_last_a_whole_window_of_fresh_data():
    rates = [12] + [None] * 6 + [0] * 6
    loop, applied, _ = run(rates)
    assert applied == [{"cpu": 2}, {"cpu": 1}]
    first_fresh = 7
    down = max(i for i, t in enumerate(loop.ticks) if t.changed)
    assert down - (first_fresh - 1) >= SETTINGS.scale_down_stabilization_s, down  # not on the first fresh sample
