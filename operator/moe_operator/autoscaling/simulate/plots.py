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
            ax2.step(
                tt, n, style, where="post", color=f"C{i}", lw=1.8 if name == "ours" else 1.2, label=f"{name}: {pool}"
            )
    ax2.set_ylabel("replicas asked for")
    ax2.set_xlabel("minutes")
    ax2.legend(fontsize=8, loc="upper right")
    return save_figure(fig, out)


def save_figure(fig, out: str | Path) -> Path:
    """Lay out, write (parents created) and close a figure; returns the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_frontier(panels: list[dict], out: str | Path, target_ratio: float = 1.15, target_slo: float = 0.99) -> Path:
    """Cost (x the offline optimum) vs SLO attainment, one panel per trace.

    Each panel: {"title": str, "sweeps": {label: [(ratio, attainment, note)]} (lines), "points": {name: (ratio,
    attainment)} (baselines and references), "ymin": lowest attainment drawn (points below are named in the title)}.
    The issue's target region (ratio <= target_ratio, attainment >= target_slo) is shaded so an SRE sees where it sits
    relative to what the policies reach.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        xs = [r for pts in panel["sweeps"].values() for r, _, _ in pts] + [r for r, _ in panel["points"].values()]
        ys = [a for pts in panel["sweeps"].values() for _, a, _ in pts] + [a for _, a in panel["points"].values()]
        ax.add_patch(
            plt.Rectangle(
                (0, target_slo),
                target_ratio,
                1.0 - target_slo + 0.01,
                color="tab:green",
                alpha=0.15,
                label=f"target: <= {target_ratio:g}x optimum at >= {target_slo:.0%}",
            )
        )
        for i, (label, pts) in enumerate(panel["sweeps"].items()):
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", ms=4, lw=1.2, label=label)
            for r, a, note in pts:
                if note:
                    ax.annotate(note, (r, a), fontsize=6, xytext=(3, -8), textcoords="offset points", color=f"C{i}")
        ymin = panel.get("ymin", 0.0)
        hidden = [f"{n} ({a:.1%})" for n, (r, a) in panel["points"].items() if a < ymin]
        for j, (name, (r, a)) in enumerate(panel["points"].items()):
            if a < ymin:
                continue
            marker = "*" if name.startswith("optimum") else "s"
            ax.plot([r], [a], marker, color="k" if name.startswith("optimum") else f"C{j + len(panel['sweeps'])}",
                    ms=11 if marker == "*" else 6, ls="none", label=name)
            ax.annotate(name, (r, a), fontsize=7, xytext=(4, 3), textcoords="offset points")
        lo = max(ymin, min(ys + [target_slo]) - 0.02)
        ax.set_ylim(lo, 1.003)
        ax.set_xlim(0, max(xs + [target_ratio]) * 1.08)
        ax.set_xlabel("cost / offline optimum")
        ax.set_ylabel("SLO attainment (fraction of requests)")
        ax.set_title(panel["title"] + (f"\nbelow the axis: {', '.join(hidden)}" if hidden else ""), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    return save_figure(fig, out)
