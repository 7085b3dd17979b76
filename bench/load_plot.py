"""The load tool's PNG: latency, throughput and users over the run, with the daemon's loads,
evictions and swaps as vertical lines, so a latency cliff can be read against what the
scheduler did at that moment. Agg backend: no display is needed (CI, a headless box)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.load_stats import Bucket, Marker, Record, percentile

MARKER_STYLE = {"load": ("tab:green", "-"), "evict": ("tab:red", "--"), "swap": ("tab:purple", ":"),
                "unload": ("tab:gray", "-."), "load failed": ("black", "-"), "crash": ("black", "--")}


def plot(path: Path, records: list[Record], series: list[Bucket], marks: list[Marker], t0: float,
         width: float, title: str, stop: float | None = None) -> Path:
    """Three panels sharing the time axis (seconds since the run began): latency of the
    successful requests (scatter, p50/p99 per bucket, log scale), completions and errors per
    second, active users and requests in flight."""
    fig, (lat_ax, rate_ax, user_ax) = plt.subplots(3, 1, figsize=(12, 9), sharex=True,
                                                   gridspec_kw={"height_ratios": [3, 2, 2]})
    ok = [r for r in records if r.ok]
    if ok:
        lat_ax.scatter([r.end - t0 for r in ok], [r.latency for r in ok], s=2, alpha=0.15,
                       color="tab:blue", label="a request (by completion)")
    mids = [b.start + width / 2 for b in series]
    p50 = [percentile(b.latencies, 50) for b in series]
    p99 = [percentile(b.latencies, 99) for b in series]
    lat_ax.plot(mids, [v if v is not None else float("nan") for v in p50], color="tab:orange", marker="o",
                ms=3, label="p50 per bucket")
    lat_ax.plot(mids, [v if v is not None else float("nan") for v in p99], color="tab:red", marker="o",
                ms=3, label="p99 per bucket")
    if ok:
        lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency (s)")
    lat_ax.legend(loc="upper left", fontsize=8)
    rate_ax.plot(mids, [b.ok / width for b in series], color="tab:green", label="completed 200/s")
    rate_ax.plot(mids, [b.errors / width for b in series], color="tab:red", label="errors/s")
    rate_ax.set_ylabel("requests/s")
    rate_ax.legend(loc="upper left", fontsize=8)
    user_ax.plot(mids, [b.users for b in series], color="tab:blue", label="active users")
    user_ax.plot(mids, [b.in_flight for b in series], color="tab:orange", label="requests in flight")
    user_ax.set_ylabel("users / requests")
    user_ax.set_xlabel("seconds since the run began")
    user_ax.legend(loc="upper left", fontsize=8)
    if stop is not None:  # after it no request starts; what still runs is in its grace period
        for ax in (lat_ax, rate_ax, user_ax):
            ax.axvline(stop, color="black", linewidth=1.2)
        user_ax.annotate("stop", (stop, 0.02), xycoords=("data", "axes fraction"), fontsize=7)
    seen: set[str] = set()
    for mark in marks:
        color, style = MARKER_STYLE.get(mark.kind, ("black", ":"))
        for ax in (lat_ax, rate_ax, user_ax):
            ax.axvline(mark.time, color=color, linestyle=style, linewidth=0.9, alpha=0.7)
        if mark.kind not in seen:  # one legend entry per kind, on the top panel's right
            seen.add(mark.kind)
            lat_ax.plot([], [], color=color, linestyle=style, label=f"{mark.kind} (daemon)")
        if mark.kind == "swap":  # its load and evict lines carry the names
            continue
        lat_ax.annotate(f"{mark.kind} {mark.model}", (mark.time, 1.0), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=6, va="top", ha="right", color=color)
    if seen:
        lat_ax.legend(loc="upper left", fontsize=8)
    for ax in (lat_ax, rate_ax, user_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
