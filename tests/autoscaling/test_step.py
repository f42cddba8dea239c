"""autoscaling.step.observe_and_decide: the tick core the operator and ``moectl up`` share."""
from __future__ import annotations

from helpers import obs, settings, two_pools

from moe_operator.autoscaling.policy import History
from moe_operator.autoscaling.step import observe_and_decide


class Source:
    def __init__(self, observation, error=None):
        self.observation, self.last_error = observation, error

    def observe(self):
        return self.observation


def test_ready_replaces_what_the_metrics_said_and_none_keeps_it():
    pools, seen = two_pools(), []
    o = obs(1000.0, 50.0, ready={"ascend": 3, "h800": 3})

    def ready(said):
        seen.append(dict(said))
        return {"ascend": 1}   # e.g. pods Ready: h800 has none
    got, _ = observe_and_decide(Source(o), pools, settings(), History(desired={"ascend": 1, "h800": 1}), 1000.0, ready)
    assert seen == [{"ascend": 3, "h800": 3}] and got.ready == {"ascend": 1, "h800": 0}
    kept, _ = observe_and_decide(Source(o), pools, settings(), History(desired={"ascend": 1, "h800": 1}), 1000.0,
                                 lambda said: None)
    assert kept.ready == {"ascend": 3, "h800": 3}


def test_a_held_decision_says_why():
    pools, hist = two_pools(), History(desired={"ascend": 2, "h800": 1})
    _, d = observe_and_decide(Source(None, "scrape http://x/metrics failed: refused"), pools, settings(), hist, 1000.0,
                              lambda said: said)
    assert d.held and d.replicas == {"ascend": 2, "h800": 1} and "scrape http://x/metrics failed" in d.reason
    _, d = observe_and_decide(None, pools, settings(), hist, 1000.0, lambda said: said, no_source="no metrics source")
    assert d.held and "no metrics source" in d.reason
