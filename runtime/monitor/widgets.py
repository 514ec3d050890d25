"""Formatting and small NiceGUI builders the monitor's page uses; no state here.

In: numbers, seconds, byte counts, node ids, and dicts of names and values. Out: the strings the
page shows (`fmt_seconds`, `fmt_count`, `fmt_bytes`, `fmt_cost`, `short_node`), an ECharts
option for a line chart (`line_chart`), a two-column grid of names and values (`pairs`), and
the (size, mtime) stamp that tells when a damaged file is worth reading again (`stamp`).
"""
from __future__ import annotations

import os

STATUS_COLORS = {"finished": "positive", "done": "positive", "running": "primary", "paused": "warning",
                 "pending": "grey-6", "not run": "grey-6", "stopped": "orange", "failed": "negative",
                 "lost": "negative"}
SERIES_COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2"]


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_count(n: float | None) -> str:
    if n is None:
        return "—"
    n = float(n)
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return f"{n:.0f}" if n == int(n) else f"{n:.1f}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for size, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= size:
            return f"{n / size:.1f} {suffix}"
    return f"{n:.0f} B"


def short_node(node: str) -> str:
    """A Ray node id (56 hex digits) by its first 8, as `ray status` lists it; "local" stays."""
    return node[:8] if len(node) > 12 else node


def fmt_cost(cost: float | None) -> str:
    return "unknown (no price)" if cost is None else f"${cost:,.4f}"


def pairs(values: dict) -> None:
    """Names and values in two columns (an agent's persona, its state at a checkpoint)."""
    from nicegui import ui

    with ui.element("div").classes("grid gap-x-4 gap-y-1 text-sm").style("grid-template-columns: max-content 1fr"):
        for key, value in values.items():
            ui.label(key).classes("text-slate-500")
            ui.label(str(shown(value))).classes("mono")


def shown(value):
    """Floats with four decimals: a persona table is for reading, the Parquet file keeps them all."""
    return round(value, 4) if isinstance(value, float) else value


def line_chart(title: str, names: list[str]) -> dict:
    return {
        "animation": False,
        "title": {"text": title, "left": "center", "textStyle": {"fontSize": 13, "fontWeight": 500}},
        "tooltip": {"trigger": "axis"},
        "legend": {"bottom": 0} if len(names) > 1 else {"show": False},
        "grid": {"left": 56, "right": 20, "top": 36, "bottom": 48 if len(names) > 1 else 28},
        "xAxis": {"type": "category", "data": []},
        "yAxis": {"type": "value", "scale": True},
        "series": [{"name": n, "type": "line", "data": [], "showSymbol": True, "smooth": False,
                    "symbol": ["circle", "triangle", "rect", "diamond"][i % 4], "symbolSize": 7,
                    "color": SERIES_COLORS[i % len(SERIES_COLORS)]} for i, n in enumerate(names)],
    }


def stamp(path: str):
    """(size, mtime) of a file, None when it is gone: tells when a damaged file is worth reading again."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns
