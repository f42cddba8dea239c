"""PNG plots of a simulation (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _smooth(x: np.ndarray, w: int) -> np.ndarray:
    if len(x) < w or w <= 1:
        return x
    return np.convolve(x, np.ones(w) / w, mode="same")


def plot_results(results: dict, pool_names: list[str], out: str | Path, title: str, smooth_s: int = 30) -> Path:
    """Two panels: demand vs capacity (work units/s) per policy; replicas per pool over time (ours, optimum)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    any_series = next(iter(results.values())).series
    t = np.array([s[0] for s in any_series]) / 60.0
    demand = _smooth(np.array([s[1] for s in any_series]), smooth_s)
    ax1.fill_between(t, demand, color="0.8", label=f"demand ({smooth_s}s mean)")
    for name, r in results.items():
        tt = np.array([s[0] for s in r.series]) / 60.0
        cap = np.array([s[2] for s in r.series])
        lw = 2.2 if name in ("ours", "optimum") else 1.0
        ls = "--" if name.startswith("optimum") else "-"
        ax1.plot(tt, cap, ls, lw=lw, label=f"{name} (${r.total_cost:.2f}, SLO {r.slo_attainment:.1%})")
    ax1.set_ylabel("work units/s (generated-token equiv.)")
    ax1.set_title(title)
    ax1.legend(fontsize=7, ncol=2, loc="upper right")
    for name, style in (("ours", "-"), ("optimum", ":")):
        if name not in results:
            continue
        r = results[name]
        tt = np.array([s[0] for s in r.series]) / 60.0
        for i, pool in enumerate(pool_names):
            n = np.array([s[3].get(pool, 0) for s in r.series])
            ax2.step(tt, n, style, where="post", color=f"C{i}", lw=1.8 if name == "ours" else 1.2, label=f"{name}: {pool}")
    ax2.set_ylabel("replicas asked for")
    ax2.set_xlabel("minutes")
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
