"""The monitor's Results card: recorded metrics per iteration, and the latest ask's answers.

In: the Page this class is mixed into (its `monitor` and `_card`). Out: one line chart per
recorded metric (`_draw_metrics`, from `metric_series`) and a histogram or category counts of
the latest finished ask's answers (`_draw_distribution`, read from its Parquet file once per
ask). A damaged answers file is said under the chart; the rest of the page goes on.
"""
from __future__ import annotations

import os

from .files import distribution
from .widgets import line_chart


class ResultsPanel:
    """The Results card (mixed into Page)."""

    def _results_card(self) -> None:
        from nicegui import ui

        with self._card("Results", "recorded metrics per iteration, and the latest answers"):
            self.metric_box = ui.element("div").classes("w-full grid grid-cols-1 md:grid-cols-2 gap-2")
            self.no_metrics = ui.label("no record yet").classes("text-sm text-slate-500")
            self.distribution_chart = ui.echart({
                "animation": False, "title": {"text": "", "left": "center", "textStyle": {"fontSize": 13, "fontWeight": 500}},
                "tooltip": {}, "grid": {"left": 56, "right": 20, "top": 36, "bottom": 40},
                "xAxis": {"type": "category", "data": []}, "yAxis": {"type": "value", "name": "agents"},
                "series": [{"type": "bar", "data": [], "color": "#64748b"}],
            }).classes("w-full h-56 distribution-chart").mark("distribution")
            self.distribution_chart.set_visibility(False)
            self.distribution_error = ui.label("").classes("text-sm text-red-700").mark("distribution-error")
            self.distribution_error.set_visibility(False)

    def _draw_metrics(self) -> None:
        from nicegui import ui

        series = self.monitor.metric_series()
        self.no_metrics.set_visibility(not series)
        for name, (xs, ys) in series.items():
            chart = self.metric_charts.get(name)
            if chart is None:
                with self.metric_box:
                    chart = ui.echart(line_chart(name, [name])).classes("w-full h-52 metric-chart").mark(f"metric:{name}")
                self.metric_charts[name] = chart
            chart.options["xAxis"]["data"] = list(xs)
            chart.options["series"][0]["data"] = list(ys)
            chart.update()

    def _draw_distribution(self) -> None:
        path = self.monitor.latest_ask_file()
        if path is None or path == self.distribution_path or not os.path.exists(path):
            return
        self.distribution_path = path
        step, label = self.monitor.latest_ask
        shown = distribution(path)
        chart = self.distribution_chart
        self.distribution_error.set_text(shown.get("error", ""))
        self.distribution_error.set_visibility(shown["kind"] == "error")
        if shown["kind"] == "error":  # a damaged file: this chart says so, the rest of the page goes on
            chart.set_visibility(False)
            return
        title = f"answers of {step[5:]} {label}".strip()
        if shown["kind"] == "histogram":
            edges = shown["edges"]
            if shown.get("integer") and all(float(e).is_integer() or (e + 0.5).is_integer() for e in edges):
                names = [str(int(e + 0.5)) for e in edges[:-1]]
            else:
                names = [f"{a:g}–{b:g}" for a, b in zip(edges, edges[1:])]
            data = shown["counts"]
        elif shown["kind"] == "categories":
            names, data = shown["labels"], shown["counts"]
        else:
            names, data = [], []
            title += f" ({shown.get('type')}: not charted)"
        if shown.get("missing"):
            title += f" · {shown['missing']} missing"
        chart.options["title"]["text"] = title
        chart.options["xAxis"]["data"] = names
        chart.options["series"][0]["data"] = data
        chart.set_visibility(True)
        chart.update()
