"""Inputs that once crashed the autoscaler or the trace loaders (found by review): each must give a decision or one
clear UserError, never a ZeroDivisionError, a NaN in an int() or a trace whose replay never ends."""
import math

import pytest

from helpers import obs, settings, two_pools
from moe_operator.autoscaling import decide
from moe_operator.autoscaling.simulate.traces import load_trace
from moe_operator.autoscaling.sources.scrape import parse_metrics
from moe_operator.errors import UserError


def test_two_decisions_at_the_same_instant_do_not_divide_by_zero():
    """A coarse clock (or the simulator's first tick) can call decide twice with the same ``now``."""
    pools, s = two_pools(), settings()
    first = decide(obs(100.0, 500.0, ready={"ascend": 1, "h800": 0}, queue=3.0), pools, s, None, now=100.0)
    again = decide(obs(100.0, 500.0, ready={"ascend": 1, "h800": 0}, queue=3.0), pools, s, first.history, now=100.0)
    assert sum(again.replicas.values()) >= 1


def test_a_clock_that_steps_back_still_decides():
    pools, s = two_pools(), settings()
    first = decide(obs(100.0, 500.0, ready={"ascend": 1}, queue=2.0), pools, s, None, now=100.0)
    back = decide(obs(90.0, 500.0, ready={"ascend": 1}, queue=2.0), pools, s, first.history, now=90.0)
    assert all(n >= 0 for n in back.replicas.values())


def test_no_pools_is_an_empty_decision_not_a_crash():
    d = decide(obs(0.0, 0.0, queue=1.0, rps=0.0), [], settings(), None, now=0.0)   # no per-request figure yet
    assert d.replicas == {}


def test_non_finite_scraped_values_are_dropped():
    """A replica exporting +Inf or NaN must not reach the policy (int(nan) crashed the mix search)."""
    text = ('# TYPE moe_tokens_total counter\nmoe_tokens_total{kind="generated",pool="cpu"} +Inf\n'
            'moe_tokens_total{kind="prompt",pool="cpu"} 10\n'
            '# TYPE moe_queue_depth gauge\nmoe_queue_depth{pool="cpu"} NaN\n')
    snap = parse_metrics(text, at=0.0)
    assert all(math.isfinite(v) for v in snap.tokens.values())
    assert snap.tokens.get("prompt") == 10.0
    assert math.isfinite(snap.queue)


@pytest.mark.parametrize("body,suffix", [
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,nan,2\n", ".csv"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,10,inf\n", ".csv"),
    ('{"timestamp": 0, "input_length": NaN, "output_length": 3, "hash_ids": []}\n', ".jsonl"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 3, "hash_ids": []}\n'
     '{"timestamp": Infinity, "input_length": 5, "output_length": 3, "hash_ids": []}\n', ".jsonl"),
])
def test_non_finite_trace_numbers_are_user_errors(tmp_path, body, suffix):
    f = tmp_path / f"t{suffix}"
    f.write_text(body)
    with pytest.raises(UserError, match="finite"):
        load_trace(f)
