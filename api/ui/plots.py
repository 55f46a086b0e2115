"""Server-side plots for the dashboard: matplotlib figures rendered as inline SVG (text kept as
text, so the page stays searchable and readable by tests; no JavaScript, no CDN)."""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Sequence

import matplotlib
import pandas as pd
from markupsafe import Markup
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

from recsys.evaluation.online import VariantStats

ACCENT = "#2463eb"
SECOND = "#e07b00"
GRID = "#d9dee7"
_SIZE = re.compile(r'<svg([^>]*?)\swidth="[^"]*"\s+height="[^"]*"')


def _text_only(plot):
    """Every string a plot draws is text, never markup: matplotlib would otherwise parse
    ``$…$`` in a variant name or item id as math (and fail the page on ``$\\frac{$``)."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return plot(*args, **kwargs)

    return wrapper


def _figure(width: float = 10.0, height: float = 2.6) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasSVG(fig)
    return fig


def _legend_above(ax) -> None:
    """The legend in a row above the plot area, never over the data."""
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=4, borderaxespad=0.2)


def _style(ax) -> None:
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)


def _svg(fig: Figure, label: str) -> Markup:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # no XML prolog or DOCTYPE inside HTML
    # scale with the page: keep the viewBox, drop the fixed size
    text = _SIZE.sub(r"<svg\1", text, count=1)
    text = text.replace("<svg", f'<svg class="plot" role="img" aria-label="{_attr(label)}"', 1)
    return Markup(text)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


#: most bins a time plot draws, whatever span its events cover
MAX_TIME_BINS = 400
#: share of events (at each end) a time plot may leave out to show the range holding the rest
TIME_TRIM = 0.005


def time_bins(per_day: pd.Series) -> tuple[pd.Series, int, int]:
    """Event counts per bin over the range that holds the data: days from the first to the
    last day once ``TIME_TRIM`` of the events at each end is set aside, in at most
    ``MAX_TIME_BINS`` equal bins of whole days. Returns (counts indexed by bin start, bin width
    in days, events left outside the range). Two stray events 230 years apart cost as much as
    any other plot."""
    day = (per_day.index.tz_convert("UTC").tz_localize(None).normalize() - pd.Timestamp(0)).days.to_numpy()
    counts = per_day.to_numpy(dtype="int64")
    order = day.argsort(kind="stable")
    day, counts = day[order], counts[order]
    cum = counts.cumsum()
    total = int(cum[-1])
    lo = day[int((cum > TIME_TRIM * total).argmax())]
    hi = day[int((cum >= (1 - TIME_TRIM) * total).argmax())]
    inside = (day >= lo) & (day <= hi)
    width = max(1, -(-(int(hi - lo) + 1) // MAX_TIME_BINS))
    n_bins = (int(hi - lo) // width) + 1
    binned = pd.Series(0, index=range(n_bins), dtype="int64")
    binned = binned.add(pd.Series(counts[inside]).groupby((day[inside] - lo) // width).sum(), fill_value=0).astype(
        "int64"
    )
    starts = pd.Timestamp(0) + pd.to_timedelta(lo + binned.index.to_numpy() * width, unit="D")
    return pd.Series(binned.to_numpy(), index=starts), width, total - int(counts[inside].sum())


@_text_only
def events_over_time(per_day: pd.Series, label: str) -> Markup | None:
    """Event counts over time (:func:`time_bins`): per day (filled steps) with a 7-day mean,
    per week as bars when there are too few events a day to read a daily curve (a single
    item's popularity), or per wider bin over a long span. None for no events."""
    fig = events_figure(per_day)
    return None if fig is None else _svg(fig, label)


def events_figure(per_day: pd.Series) -> Figure | None:
    """The figure of :func:`events_over_time`: counts from 0, the legend above the plot."""
    if per_day.empty or int(per_day.sum()) == 0:
        return None
    binned, width, outside = time_bins(per_day)
    fig = _figure()
    ax = fig.add_subplot()
    if width == 1 and binned.mean() < 2 and len(binned) > 14:
        weekly = binned.resample("W-MON", label="left", closed="left").sum()
        ax.bar(weekly.index, weekly.to_numpy(), width=6, align="edge", color=ACCENT, alpha=0.7)
        ax.set_ylabel("events per week")
    elif width == 1:
        # one filled step path rather than a bar per day: a small SVG however long the history
        ax.fill_between(
            binned.index, binned.to_numpy(), step="mid", color=ACCENT, alpha=0.3, linewidth=0, label="per day"
        )
        ax.plot(
            binned.index,
            binned.rolling(7, min_periods=1).mean().to_numpy(),
            color=ACCENT,
            linewidth=1.6,
            label="7-day mean",
        )
        ax.set_ylabel("events")
        _legend_above(ax)
    else:
        ax.fill_between(binned.index, binned.to_numpy(), step="post", color=ACCENT, alpha=0.5, linewidth=0)
        ax.set_ylabel(f"events per {width} days")
    if outside:
        ax.set_title(f"{outside:,} event(s) outside the range shown", fontsize=8, loc="right")
    ax.set_ylim(bottom=0)
    _style(ax)
    fig.autofmt_xdate(rotation=0, ha="center")
    return fig


@_text_only
def metric_over_versions(
    versions: Sequence[str], series: dict[str, Sequence[float | None]], label: str
) -> Markup | None:
    """One line per metric over registry versions (oldest left); None when nothing to draw."""
    fig = metrics_figure(versions, series)
    return None if fig is None else _svg(fig, label)


def metrics_figure(versions: Sequence[str], series: dict[str, Sequence[float | None]]) -> Figure | None:
    """The figure of :func:`metric_over_versions`. The axis starts at 0 (a ranking metric's
    floor): two versions 0.0002 apart are drawn as the near-equals they are, not as a cliff
    across an axis spanning 0.1812–0.1814. The legend sits above the plot."""
    if not versions or not any(v is not None for values in series.values() for v in values):
        return None
    fig = _figure(height=2.8)
    ax = fig.add_subplot()
    xs = list(range(len(versions)))
    for (name, values), color in zip(series.items(), (ACCENT, SECOND, "#2a9d55", "#8a4fd1")):
        points = [(x, v) for x, v in zip(xs, values) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color, label=name)
    ax.set_xticks(xs, [f"v{v}" for v in versions])
    ax.set_xlabel("registry version")
    top = max(v for values in series.values() for v in values if v is not None)
    ax.set_ylim(bottom=min(0.0, *(v for values in series.values() for v in values if v is not None)))
    ax.set_ylim(top=max(top * 1.15, 1e-3))
    if len(versions) == 1:
        ax.set_xlim(-0.5, 0.5)
    _legend_above(ax)
    _style(ax)
    return fig


@_text_only
def ab_rates(stats: Sequence[VariantStats], outcomes: Sequence[str], label: str) -> Markup | None:
    """Per variant, each outcome's rate with its 95% Wilson interval (error bars)."""
    if not stats:
        return None
    fig = _figure(height=1.0 + 0.4 * len(stats))
    axes = fig.subplots(1, len(outcomes), sharey=True, squeeze=False)[0]
    ys = list(range(len(stats)))
    for ax, outcome, color in zip(axes, outcomes, (ACCENT, SECOND)):
        rates = [s.rates[outcome] for s in stats]
        # clipped at 0: a rate at an interval's end differs from it by rounding only
        low = [max(0.0, s.rates[outcome] - s.intervals[outcome][0]) for s in stats]
        high = [max(0.0, s.intervals[outcome][1] - s.rates[outcome]) for s in stats]
        ax.errorbar(rates, ys, xerr=[low, high], fmt="o", color=color, capsize=4)
        ax.set_title(f"{outcome} rate (95% interval)", fontsize=9)
        ax.set_xlim(left=0)
        _style(ax)
    axes[0].set_yticks(ys, [s.variant for s in stats])
    axes[0].invert_yaxis()
    return _svg(fig, label)


@_text_only
def bars(labels: Sequence[str], values: Sequence[float], label: str, xlabel: str) -> Markup | None:
    """Horizontal bars, one per label."""
    if not labels:
        return None
    fig = _figure(height=0.5 + 0.35 * len(labels))
    ax = fig.add_subplot()
    ys = list(range(len(labels)))
    ax.barh(ys, values, color=ACCENT, alpha=0.8)
    ax.set_yticks(ys, list(labels))
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    _style(ax)
    return _svg(fig, label)
