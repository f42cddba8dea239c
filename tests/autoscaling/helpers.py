"""Shared constructors for autoscaling tests: two pools of different price per work unit."""
from moe_operator.autoscaling import Observation, PoolModel, Settings


def two_pools(**over):
    cheap = dict(name="ascend", price_per_hour=16.0, capacity=1000.0, min_replicas=0, max_replicas=10, cold_start_s=180)
    fast = dict(name="h800", price_per_hour=20.0, capacity=1500.0, min_replicas=0, max_replicas=10, cold_start_s=120)
    cheap.update(over.get("ascend", {}))
    fast.update(over.get("h800", {}))
    return [PoolModel(**cheap), PoolModel(**fast)]


def obs(t, generated, ready=None, queue=0.0, ttft=None, tpot=None, rps=1.0, prompt=0.0):
    return Observation(observed_at=t, tokens_per_s={"generated": generated, "prompt": prompt, "cached_prompt": 0.0},
                       requests_per_s=rps, queue_depth=queue, ttft_p95_s=ttft, tpot_p95_s=tpot, ready=ready or {})


def settings(**kw):
    base = dict(target_utilization=1.0, scale_down_stabilization_s=0.0, hysteresis=0.0)
    base.update(kw)
    return Settings(**base)
