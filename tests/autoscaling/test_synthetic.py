"""simulate/synthetic.py: each shape has its defining property, hits its mean work rate, and is deterministic."""
import numpy as np
import pytest

from moe_operator.autoscaling import PoolModel, WorkWeights
from moe_operator.autoscaling.simulate.synthetic import (SHAPES, envelope, for_pools, generate, peak_of,
                                                          widest_capacity)

W = WorkWeights(prompt=0.125, cached_prompt=0.01)
D = 3600.0


def work_of(tr):
    return W.prompt * tr.prompt + W.cached_prompt * tr.cached + tr.output


def bins(tr, width=300.0):
    """Requests per ``width`` seconds."""
    return np.bincount((tr.arrival_s // width).astype(int), minlength=int(D // width))[: int(D // width)]


@pytest.fixture(scope="module")
def traces():
    return {s: generate(s, 2000.0, W, D, seed=7) for s in SHAPES}


def test_eight_shapes():
    assert len(SHAPES) >= 8 and {"flat", "diurnal", "ramp", "step", "spikes", "on-off", "long-prompt",
                                 "heavy-tail"} <= set(SHAPES)
    with pytest.raises(ValueError, match="unknown shape"):
        envelope("square", D)


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_work_rate_order_and_determinism(traces, shape):
    tr = traces[shape]
    assert work_of(tr).sum() / D == pytest.approx(2000.0, rel=0.01)
    assert tr.arrival_s[0] == 0.0 and np.all(np.diff(tr.arrival_s) >= 0) and tr.arrival_s[-1] <= D
    assert (tr.prompt >= 0).all() and (tr.cached >= 0).all() and (tr.output >= 1).all()
    again = generate(shape, 2000.0, W, D, seed=7)
    assert np.array_equal(again.arrival_s, tr.arrival_s) and np.array_equal(again.output, tr.output)
    other = generate(shape, 2000.0, W, D, seed=8)
    assert len(other) != len(tr) or not np.array_equal(other.arrival_s, tr.arrival_s)
    assert envelope(shape, D, 7).mean() == pytest.approx(1.0)


def test_flat_stays_flat(traces):
    b = bins(traces["flat"])
    assert np.all(np.abs(b / b.mean() - 1) < 0.2)


def test_diurnal_trough_at_the_ends_peak_in_the_middle(traces):
    b = bins(traces["diurnal"])
    assert 4 <= int(np.argmax(b)) <= 7
    assert b[0] < 0.6 * b.mean() and b[-1] < 0.6 * b.mean()
    assert b.max() / b.min() > 2.5


def test_ramp_rises_then_falls(traces):
    b = bins(traces["ramp"])
    assert np.all(np.diff(b[:6]) > 0) and np.all(np.diff(b[6:]) < 0)
    assert b[0] < 0.4 * b.mean()


def test_step_middle_third_three_times_the_rest(traces):
    t = traces["step"].arrival_s
    middle = ((t >= D / 3) & (t < 2 * D / 3)).sum()
    outer = len(t) - middle
    assert middle / (outer / 2) == pytest.approx(3.0, rel=0.1)


def test_spikes_are_short_and_tall(traces):
    per_s = np.bincount(traces["spikes"].arrival_s.astype(int), minlength=int(D))
    assert np.percentile(per_s, 99) >= 4 * np.median(per_s)
    m = envelope("spikes", D, 7)
    tall = np.flatnonzero(m > 2)
    runs = np.split(tall, np.flatnonzero(np.diff(tall) > 1) + 1)
    assert len(runs) >= 6 and max(len(r) for r in runs) <= 30
    assert peak_of("spikes", D, 7) > 4


def test_on_off_has_no_arrival_when_off(traces):
    t = traces["on-off"].arrival_s
    assert np.all(t % 600 <= 300)
    assert len(t) > 1000


def test_token_distributions(traces):
    chat, long_, heavy = traces["flat"], traces["long-prompt"], traces["heavy-tail"]

    def top1_share(x):
        x = np.sort(x)
        return x[-max(1, len(x) // 100):].sum() / x.sum()

    prompt = chat.prompt + chat.cached
    assert np.median(prompt) == pytest.approx(1024, rel=0.1) and np.median(chat.output) == pytest.approx(128, rel=0.1)
    assert 0.2 < chat.cache_hit_ratio < 0.4                      # half are follow-ups with 30-90% cached
    assert np.median(long_.prompt + long_.cached) >= 8000
    assert top1_share(heavy.output) >= 0.15 > top1_share(chat.output)
    assert heavy.output.max() <= 16384
    tiny = generate("long-prompt", 300.0, W, 600.0, seed=1, max_context=2048)
    assert (tiny.prompt + tiny.cached + tiny.output).max() <= 2048


def test_sized_to_the_spec():
    a = PoolModel("a", price_per_hour=2.0, capacity=1500.0, max_replicas=4)
    b = PoolModel("b", price_per_hour=1.0, capacity=800.0, max_replicas=2)
    assert widest_capacity([a, b]) == 4 * 1500 + 2 * 800
    assert widest_capacity([a, b], max_hourly_cost=5.0) == 2 * 1500 + 1 * 800
    for shape in ("diurnal", "spikes"):
        tr = for_pools(shape, [a, b], W, peak_load=0.5, max_hourly_cost=5.0, seed=2)
        mean = work_of(tr).sum() / D
        assert mean == pytest.approx(0.5 * 3800 / peak_of(shape, D, 2), rel=0.01)
    # the same shape at two sizes: the same envelope, scaled
    small = for_pools("step", [b], W, peak_load=0.5, seed=2)
    large = for_pools("step", [a], W, peak_load=0.5, seed=2)
    assert len(large) / len(small) == pytest.approx(4 * 1500 / (2 * 800), rel=0.05)
