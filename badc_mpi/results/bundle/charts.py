"""The report's charts: plain data in, PNG bytes out (matplotlib, Agg backend, no display).

Every function returns an image even without data (a titled "no data" panel), so that the report
always has each chart in the same place. Axes and colour bars of counts have whole-number ticks.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 100
NOT_SURVEYED = "#bdbdbd"  #: NA cells (no analysed chunk): grey, never a colour of the scale


def _png(fig: matplotlib.figure.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _empty(ax: matplotlib.axes.Axes, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=14, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _whole(axis: matplotlib.axis.Axis) -> None:
    """Whole-number ticks (an axis of counts)."""
    axis.set_major_locator(MaxNLocator(integer=True))


def _count_colorbar(fig: matplotlib.figure.Figure, im: matplotlib.image.AxesImage, ax: matplotlib.axes.Axes) -> None:
    bar = fig.colorbar(im, ax=ax, label="detections")
    _whole(bar.ax.yaxis)


def top_species_bar(labels: Sequence[str], counts: Sequence[int], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.32 * len(labels) + 1)))
    if not labels:
        _empty(ax, title)
        return _png(fig)
    y = np.arange(len(labels))
    ax.barh(y, counts, color="#3a7ca5")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("detections")
    _whole(ax.xaxis)
    ax.set_title(title)
    for yi, c in zip(y, counts):
        ax.text(c, float(yi), f" {c:,}", va="center", fontsize=8)
    return _png(fig)


def heatmap(labels: Sequence[str], buckets: Sequence[str], grid: np.ndarray, title: str, xlabel: str) -> bytes:
    """``grid[i, j]``: detections of ``labels[i]`` in ``buckets[j]``."""
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.32 * len(labels) + 1.5)))
    if not labels or not buckets:
        _empty(ax, title)
        return _png(fig)
    im = ax.imshow(grid, aspect="auto", cmap="YlGnBu", interpolation="nearest", vmin=0, vmax=max(1.0, float(np.max(grid))))
    ax.set_yticks(np.arange(len(labels)), labels)
    step = max(1, len(buckets) // 12)
    ax.set_xticks(np.arange(0, len(buckets), step), [buckets[i] for i in range(0, len(buckets), step)], rotation=45, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    _count_colorbar(fig, im, ax)
    return _png(fig)


def confidence_histograms(series: dict[str, np.ndarray], bins: int, title: str) -> bytes:
    """One small histogram per label: ``series[label][k]`` = detections in confidence bin k."""
    n = len(series)
    cols = min(3, max(1, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.4 * rows), squeeze=False)
    if not series:
        _empty(axes[0][0], title)
        return _png(fig)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, (label, counts) in zip(axes.flat, series.items()):
        ax.bar(edges[:-1], counts, width=1.0 / bins, align="edge", color="#6a994e")
        ax.set_title(label, fontsize=9)
        ax.set_xlim(0, 1)
        _whole(ax.yaxis)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def worker_series(series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], title: str) -> bytes:
    """Per worker: (minutes since the first attempt, cumulative chunks, GPU utilisation %) -> the
    chunks panel, and a GPU utilisation panel only when some worker has GPU samples (not for CPU runs)."""
    any_gpu = any((~np.isnan(util)).any() for _, _, util in series.values())
    if any_gpu:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    else:
        fig, top = plt.subplots(figsize=(10, 3.5))
    if not series:
        _empty(top, title)
        return _png(fig)
    for worker, (minutes, done, util) in series.items():
        top.step(minutes, done, where="post", label=worker)
        ok = ~np.isnan(util)
        if any_gpu and ok.any():
            bottom.plot(minutes[ok], util[ok], marker=".", linestyle="-", label=worker)
    top.set_ylabel("chunks finished")
    _whole(top.yaxis)
    top.set_title(title if any_gpu else f"{title} (CPU workers: no GPU samples)")
    top.legend(fontsize=7, ncol=4)
    if any_gpu:
        bottom.set_ylabel("GPU utilisation, % (mean per attempt)")
        bottom.set_xlabel("minutes since the first attempt")
        bottom.set_ylim(0, 100)
        bottom.legend(fontsize=7, ncol=4)
    else:
        top.set_xlabel("minutes since the first attempt")
    return _png(fig)


def site_days(locations: Sequence[str], days: Sequence[str], grid: np.ndarray, title: str) -> bytes:
    """``grid[i, j]``: focus-species detections at ``locations[i]`` on ``days[j]``; NaN = not
    surveyed (no analysed chunk), drawn grey, so 0 (surveyed, none) differs from it. Zero is the
    scale's palest colour and the scale runs 0..max(1, most), whatever the data (none found
    included)."""
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.35 * len(locations) + 1.5)))
    if not locations or not days:
        _empty(ax, title)
        return _png(fig)
    ax.set_facecolor(NOT_SURVEYED)
    masked = np.ma.masked_invalid(grid)
    top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0
    cmap = matplotlib.colormaps["YlGn"].with_extremes(bad=NOT_SURVEYED)
    im = ax.imshow(masked, aspect="auto", cmap=cmap, interpolation="nearest", vmin=0, vmax=max(1.0, top))
    ax.set_yticks(np.arange(len(locations)), locations)
    step = max(1, len(days) // 14)
    ax.set_xticks(np.arange(0, len(days), step), [days[i] for i in range(0, len(days), step)], rotation=45, ha="right")
    ax.set_xlabel("local day (grey: not surveyed)")
    ax.set_title(title)
    _count_colorbar(fig, im, ax)
    return _png(fig)
