"""Limits applied around the policy's cost search: bounds, stabilization windows, and the two budgets as caps.

Units: needs are work units/s (see model.py), costs $/hour, times Unix seconds, demand tokens/s.

Both budgets are caps on the $/hour of the replicas asked for (ready or still starting: each is paid from the
moment it is asked for):
  * ``maxHourlyCost``: the cap itself. It wins over minReplicas.
  * ``maxCostPerMillionTokens``: a fleet-level cap at the observed demand D (tokens/s arriving: served + the
    queue's growth):
    $/hour <= limit x D x 3600 / 1e6. When not even the cheapest allowed fleet (minReplicas, and one replica
    unless scale to zero applies) meets it, that fleet is kept: the cap never goes below minReplicas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .model import PoolModel, Settings

EPS = 1e-9


def clamp_to_bounds(pools: Sequence[PoolModel], replicas: Mapping[str, int]) -> dict[str, int]:
    """Per-pool minReplicas <= n <= maxReplicas."""
    return {p.name: min(p.max_replicas, max(p.min_replicas, int(replicas.get(p.name, 0)))) for p in pools}


def window_needs(needs: Sequence[tuple[float, ...]], now: float, up_s: float, down_s: float) -> tuple[float, float]:
    """(need to scale up to, need to scale down to) from the (time, need[, latency reserve]) history, HPA-style.

    Scale up only to the lowest need of the last ``up_s`` seconds (a spike must last to count; a sample's need is
    the higher of its mean need and its latency reserve) and scale down only to the highest mean need of the last
    ``down_s`` seconds (a dip must last to count; the latency reserve keeps its own window, burst.py).
    ``needs`` must include the current sample.
    """
    up = [max(n[1:]) for n in needs if now - n[0] <= up_s + 1e-9]
    down = [n[1] for n in needs if now - n[0] <= down_s + 1e-9]
    return min(up), max(down)


def _slope(samples: Sequence[tuple[float, float]]) -> tuple[float, float, float, float] | None:
    """Least squares through (t, y): (slope, its standard error, mean t, mean y); None with fewer than three."""
    n = len(samples)
    if n < 3:
        return None
    tm = sum(t for t, _ in samples) / n
    ym = sum(y for _, y in samples) / n
    sxx = sum((t - tm) ** 2 for t, _ in samples)
    if sxx <= 0:
        return None
    slope = sum((t - tm) * (y - ym) for t, y in samples) / sxx
    resid = sum((y - ym - slope * (t - tm)) ** 2 for t, y in samples)
    return slope, (resid / (n - 2) / sxx) ** 0.5, tm, ym


def trend_ahead(samples: Sequence[tuple[float, float]], now: float, horizon_s: float) -> float | None:
    """The least-squares line through the (time s, need) samples, read ``horizon_s`` after ``now``, when the need
    rises throughout them: the slope over all the samples and over their recent half is positive and at least two
    standard errors from zero (a trend, not the noise of 30 s means; and not one step up, after which the recent
    half is flat). None otherwise, or with fewer than three samples in a half."""
    samples = sorted(samples)
    whole, recent = _slope(samples), _slope(samples[len(samples) // 2:])
    if whole is None or recent is None:
        return None
    if any(slope <= 0 or slope < 2 * se for slope, se, _, _ in (whole, recent)):
        return None
    slope, _, tm, ym = whole
    return ym + slope * (now + horizon_s - tm)


def enforce_budget(pools: Sequence[PoolModel], replicas: Mapping[str, int], max_hourly_cost: float | None,
                   factors: Mapping[str, float] | None = None) -> dict[str, int]:
    """Drop replicas, most expensive per work unit first, until the mix costs <= max_hourly_cost ($/hour).

    The hourly budget is a hard limit: it wins over minReplicas.
    """
    out = {p.name: int(replicas.get(p.name, 0)) for p in pools}
    if max_hourly_cost is None:
        return out
    f = factors or {}
    by_cost = sorted(pools, key=lambda p: p.price_per_hour / (p.capacity * f.get(p.name, 1.0)), reverse=True)
    while sum(out[p.name] * p.price_per_hour for p in pools) > max_hourly_cost + EPS:
        for p in by_cost:
            if out[p.name] > 0 and p.price_per_hour > 0:
                out[p.name] -= 1
                break
        else:
            break
    return out


def cost_per_million_cap(settings: Settings, demand_tokens_per_s: float | None) -> float | None:
    """$/hour that maxCostPerMillionTokens allows at the observed demand (tokens/s); None without the limit.

    No observed demand (no traffic or no token rates) allows $0/hour: only the cheapest allowed fleet."""
    limit = settings.max_cost_per_million
    if limit is None:
        return None
    return limit * max(0.0, demand_tokens_per_s or 0.0) * 3600.0 / 1e6


@dataclass(frozen=True)
class Cap:
    """The binding cap of this decision: $/hour, which budget (the status reason), and a phrase for messages."""

    dollars_per_hour: float
    reason: str          # "MaxHourlyCost" | "MaxCostPerMillionTokens"
    says: str


def binding_cap(settings: Settings, demand_tokens_per_s: float | None, demand_says: str | None = None) -> Cap | None:
    """The lower of the two caps ($/hour), or None without budgets. ``demand_says`` names the demand in messages
    (default: "the observed N tokens/s")."""
    caps = []
    if settings.max_hourly_cost is not None:
        caps.append(Cap(settings.max_hourly_cost, "MaxHourlyCost", f"maxHourlyCost ${settings.max_hourly_cost:g}/h"))
    cpm = cost_per_million_cap(settings, demand_tokens_per_s)
    if cpm is not None:
        caps.append(
            Cap(
                cpm,
                "MaxCostPerMillionTokens",
                f"maxCostPerMillionTokens ${settings.max_cost_per_million:g}/1M at "
                + (demand_says or f"the observed {demand_tokens_per_s or 0:.0f} tokens/s")
                + f" (${cpm:.2f}/h)",
            )
        )
    return min(caps, key=lambda c: c.dollars_per_hour) if caps else None


def fleet_cost_per_million(cost_per_hour: float, demand_tokens_per_s: float | None) -> float | None:
    """$ per 1M tokens of a fleet costing ``cost_per_hour`` at the observed demand; None without demand."""
    if not demand_tokens_per_s or demand_tokens_per_s <= 0:
        return None
    return cost_per_hour * 1e6 / (demand_tokens_per_s * 3600.0)
