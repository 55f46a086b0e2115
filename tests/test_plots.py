"""The dashboard's plots (api/ui/plots.py): axes from a meaningful baseline, legends outside
the data. Drawn for real with matplotlib's Agg renderer; positions are read from the figure."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg

from api.ui import plots


def _drawn(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _legend_clear_of_data(fig) -> None:
    renderer = _drawn(fig)
    (ax,) = fig.axes
    legend = ax.get_legend()
    assert legend is not None
    box, area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.y0 >= area.y1 - 1, f"legend {box} overlaps the plot area {area}"


def test_near_equal_versions_are_drawn_near_equal_from_zero():
    # two versions 0.00015 apart: the axis starts at 0, so they sit at the same height
    fig = plots.metrics_figure(["1", "2"], {"nDCG@10": [0.181225, 0.181375]})
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    assert low == 0.0 and high > 0.181375
    assert (0.181375 - 0.181225) / (high - low) < 0.01  # the gap is under 1% of the axis
    _legend_clear_of_data(fig)


def test_metric_lines_keep_negative_values_in_view():
    fig = plots.metrics_figure(["1", "2", "3"], {"amplification": [-0.05, 0.1, None]})
    low, _ = fig.axes[0].get_ylim()
    assert low <= -0.05


def test_events_legend_sits_above_the_counts_and_counts_start_at_zero():
    idx = pd.date_range("2026-01-01", periods=60, freq="D", tz="UTC")
    per_day = pd.Series(np.random.default_rng(0).poisson(300, len(idx)), index=idx)
    fig = plots.events_figure(per_day)
    assert fig.axes[0].get_ylim()[0] == 0.0
    _legend_clear_of_data(fig)


def test_svg_keeps_labels_as_text():
    svg = plots.metric_over_versions(["1", "2"], {"nDCG@10": [0.2, 0.21]}, "nDCG@10 over versions")
    labels = re.findall(r"<text[^>]*>([^<]*)", svg)
    assert 'aria-label="nDCG@10 over versions"' in svg
    assert {"v1", "v2", "0.00", "registry version"} <= set(labels)  # the axis starts at 0.00
    assert plots.metric_over_versions([], {}, "x") is None
