"""The monitor: a live NiceGUI page for one run directory (a run in progress or finished).

In: a run directory, a host and a port. Out: a web page served until Ctrl-C. Every open page
polls one shared `MonitorState` (monitor_data.py) twice a second; the state tails events.jsonl and
folds it with the same `RunState` the CLI uses. Controls write control.json (`request_control`),
which the driver obeys between steps. Beyond 127.0.0.1 every request needs the token
(monitor_auth.py). Nothing from the environment is ever put on the page.

    python -m populace.runtime.monitor RUN_DIR [--host 127.0.0.1] [--port 8080]
"""
from __future__ import annotations

import argparse
import os
import sys

from .data import PAGE_ROWS, UNREADABLE, FilterError, MonitorState, PersonaPages, distribution, find_agent, persona_files, unreadable
from populace.runtime.store.rundir import request_control

TICK = 0.5  # seconds between polls of events.jsonl: live, yet cheap for a page left open all day
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


def _pairs(values: dict) -> None:
    """Names and values in two columns (an agent's persona, its state at a checkpoint)."""
    from nicegui import ui

    with ui.element("div").classes("grid gap-x-4 gap-y-1 text-sm").style("grid-template-columns: max-content 1fr"):
        for key, value in values.items():
            ui.label(key).classes("text-slate-500")
            ui.label(str(_shown(value))).classes("mono")


def _shown(value):
    """Floats with four decimals: a persona table is for reading, the Parquet file keeps them all."""
    return round(value, 4) if isinstance(value, float) else value


def _line_chart(title: str, names: list[str]) -> dict:
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


def _stamp(path: str):
    """(size, mtime) of a file, None when it is gone: tells when a damaged file is worth reading again."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


class Page:
    """One browser tab's view of the shared monitor state."""

    def __init__(self, monitor: MonitorState):
        self.monitor = monitor
        self.drawn_version = -1
        self.step_widgets: dict = {}
        self.metric_charts: dict = {}
        self.shard_widgets: dict = {}
        self.nodes_drawn: list | None = None
        self.distribution_path = None
        self.persona_pages = None
        self.persona_page = 0
        self._persona_failed_path, self._persona_stamp = "", None

    # ------------------------------------------------------------ layout
    def build(self) -> None:
        from nicegui import ui

        ui.query("body").classes("bg-slate-100")
        ui.add_css(".mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }"
                   ".q-table th { font-weight: 600; }")
        with ui.row().classes("w-full items-center gap-4 px-5 py-3 bg-slate-800 text-white no-wrap"):
            ui.label("Populace monitor").classes("text-lg font-semibold")
            self.title = ui.label("waiting for the run to start…").classes("text-lg text-slate-200").mark("scenario")
            self.status = ui.badge("pending", color="grey-6").classes("text-sm px-3 py-1").mark("status")
            ui.space()
            self.elapsed = ui.label("").classes("text-slate-200 mono").mark("elapsed")
            self.pause = ui.button("Pause", icon="pause", on_click=lambda: self.control("pause")).props("unelevated color=amber-8").classes("control-pause").mark("pause")
            self.resume = ui.button("Resume", icon="play_arrow", on_click=lambda: self.control("resume")).props("unelevated color=green-7").classes("control-resume").mark("resume")
            self.stop = ui.button("Stop", icon="stop", on_click=lambda: self.control("stop")).props("unelevated color=red-7").classes("control-stop").mark("stop")
        with ui.column().classes("w-full p-4 gap-4"):
            with ui.row().classes("w-full gap-3"):
                self.stats = {}
                for key, title in (("agents", "agent-steps done"), ("steps", "steps done"), ("calls", "model calls"),
                                   ("tokens", "tokens in / out"), ("cost", "cost so far"), ("errors", "failed answers"),
                                   ("rate", "agents/s (run)"), ("eta", "ETA step / run")):
                    with ui.card().classes("px-4 py-2 gap-0 min-w-[9rem] flex-1").props("flat bordered"):
                        ui.label(title).classes("text-xs text-slate-500 uppercase tracking-wide")
                        self.stats[key] = ui.label("—").classes(f"text-lg font-semibold mono stat-{key}").mark(f"stat-{key}")
            self.failure = ui.label("").classes("w-full text-red-700 bg-red-50 p-3 rounded mono whitespace-pre-wrap").mark("failure")
            self.failure.set_visibility(False)
            with ui.element("div").classes("w-full grid grid-cols-1 xl:grid-cols-2 gap-4 items-start"):
                self._plan_card()
                self._results_card()
                self._throughput_card()
                self._models_card()
                self._cluster_card()
                self._errors_card()
            self._agents_card()
        ui.timer(TICK, self.refresh)
        self.refresh()

    def _card(self, title: str, hint: str = ""):
        from nicegui import ui

        card = ui.card().classes("w-full gap-2").props("flat bordered")
        with card:
            with ui.row().classes("items-baseline gap-2"):
                ui.label(title).classes("text-base font-semibold text-slate-800")
                if hint:
                    ui.label(hint).classes("text-xs text-slate-500")
        return card

    def _plan_card(self) -> None:
        from nicegui import ui

        with self._card("Plan", "click a step for its scenario lines"):
            self.plan_note = ui.label("").classes("w-full text-sm text-red-700 bg-red-50 p-2 rounded").mark("plan-note")
            self.plan_note.set_visibility(False)
            self.plan_rows = ui.column().classes("w-full gap-0")
            self.source = ui.label("").classes("w-full mono text-xs whitespace-pre bg-slate-50 p-2 rounded overflow-x-auto").mark("source")
            self.source.set_visibility(False)

    def _throughput_card(self) -> None:
        from nicegui import ui

        with self._card("Throughput", "per finished agent step"):
            self.throughput = ui.echart(_line_chart("", ["agents/s", "calls/s"])).classes("w-full h-56").mark("throughput")
            self.throughput.options["xAxis"] = {"type": "value", "name": "run time (s)", "nameLocation": "middle",
                                                "nameGap": 24, "scale": True}
            self.throughput.options["grid"]["bottom"] = 56
            self.throughput.options["legend"] = {"top": 0}
            self.eta_label = ui.label("").classes("text-sm text-slate-600").mark("eta")

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

    def _models_card(self) -> None:
        from nicegui import ui

        with self._card("Models", "updated after every ask; calls in flight sampled each second during one"):
            columns = [{"name": k, "label": label, "field": k, "align": "right" if k not in ("model", "provider") else "left"}
                       for k, label in (("model", "model"), ("provider", "provider"), ("in_flight", "in flight"),
                                        ("calls", "calls"), ("retries", "retries"),
                                        ("failures", "failures"), ("tokens_in", "tokens in"), ("tokens_out", "tokens out"),
                                        ("latency", "latency p50 / p95"), ("cost", "cost"))]
            self.models = ui.table(columns=columns, rows=[], row_key="model").props("flat dense").classes("w-full").mark("models")

    def _cluster_card(self) -> None:
        from nicegui import ui

        with self._card("Cluster", "shards per population; a bar fills when its shard finishes the current step"):
            self.cluster = ui.column().classes("w-full gap-2").mark("cluster")
            self.executor = ui.label("").classes("text-sm text-slate-600")
            self.nodes = ui.column().classes("w-full gap-0 text-sm text-slate-600 mono").mark("nodes")

    def _errors_card(self) -> None:
        from nicegui import ui

        with self._card("Errors", "agent failures, failed model calls and the run's own failure"):
            columns = [{"name": k, "label": label, "field": k, "align": "left"}
                       for k, label in (("kind", "kind"), ("step", "step"), ("iteration", "iteration"), ("agent", "agent"),
                                        ("error", "error"), ("where", "scenario line"))]
            self.errors = ui.table(columns=columns, rows=[], row_key="n", pagination=8).props("flat dense wrap-cells").classes("w-full").mark("errors")
            self.errors.on("rowClick", lambda e: self._show_error(e.args[1] if len(e.args) > 1 else {}))
            self.error_source = ui.label("").classes("w-full mono text-xs whitespace-pre bg-slate-50 p-2 rounded")
            self.error_source.set_visibility(False)
            self.no_errors = ui.label("no errors").classes("text-sm text-slate-500")

    def _agents_card(self) -> None:
        from nicegui import ui

        with self._card("Agents", "find one agent by id, or page through the personas (20 a page)"):
            with ui.row().classes("items-end gap-3"):
                self.agent_id = ui.number("agent id", value=0, min=0, format="%d").classes("w-32").mark("agent-id")
                self.population = ui.select({}, label="population").classes("w-40")
                self.population.set_visibility(False)
                ui.button("Inspect", icon="search", on_click=self.inspect).props("outline").mark("inspect")
            self.agent_view = ui.column().classes("w-full gap-2").mark("agent")
            ui.separator()
            with ui.row().classes("items-end gap-3 w-full"):
                self.filter = ui.input("filter", placeholder="age >= 21 · major = economics · background ~ physics").classes("w-96").mark("filter")
                self.filter.on("keydown.enter", lambda: self.load_personas(0))
                ui.button("Apply", on_click=lambda: self.load_personas(0)).props("outline").mark("apply-filter")
                ui.button(icon="chevron_left", on_click=lambda: self.load_personas(self.persona_page - 1)).props("flat").mark("prev-page")
                self.page_label = ui.label("").classes("text-sm text-slate-600").mark("page")
                ui.button(icon="chevron_right", on_click=lambda: self.load_personas(self.persona_page + 1)).props("flat").mark("next-page")
            self.filter_error = ui.label("").classes("text-sm text-red-700").mark("filter-error")
            self.personas_error = ui.label("").classes("text-sm text-red-700").mark("personas-error")
            self.personas_error.set_visibility(False)
            self.personas = ui.table(columns=[], rows=[], row_key="agent", pagination=PAGE_ROWS).props("flat dense hide-pagination").classes("w-full").mark("personas")

    # ------------------------------------------------------------ updates
    def refresh(self) -> None:
        monitor = self.monitor
        monitor.poll()
        live = monitor.state.status in ("running", "paused")
        if monitor.version != self.drawn_version:
            self.drawn_version = monitor.version
            self._draw()
        elif live:
            self._draw_clock()

    def _draw(self) -> None:
        monitor, state = self.monitor, self.monitor.state
        if state.scenario:
            self.title.set_text(f"{state.scenario} · {os.path.basename(os.path.abspath(monitor.run_dir))}")
        status = monitor.status
        if status != state.status and not state.scenario:  # no event read: the summary tells what ran
            self.title.set_text(f"{(monitor.summary or {}).get('scenario') or 'run'} · "
                                f"{os.path.basename(os.path.abspath(monitor.run_dir))}")
        self.status.set_text(status)
        self.status.props(f"color={STATUS_COLORS.get(status, 'grey-6')}")
        self.pause.set_enabled(status == "running")
        self.resume.set_enabled(status == "paused")
        self.stop.set_enabled(status in ("running", "paused"))
        self.stats["steps"].set_text(fmt_count(state.steps_done))
        self.stats["agents"].set_text(fmt_count(state.agents_done))
        self.stats["calls"].set_text(fmt_count(state.calls))
        self.stats["tokens"].set_text(f"{fmt_count(state.tokens_in)} / {fmt_count(state.tokens_out)}")
        self.stats["cost"].set_text(fmt_cost(monitor.cost()))
        # the same figure the CLI's summary gives: failed of asked, and the share
        self.stats["errors"].set_text(f"{fmt_count(state.errors)} of {fmt_count(state.answers)} "
                                      f"({state.failed_share:.1%})" if state.answers else fmt_count(state.errors))
        if state.failure:
            self.failure.set_text(f"run failed: {state.failure}")
            self.failure.set_visibility(True)
        self._draw_plan()
        self._draw_clock()
        self._draw_throughput()
        self._draw_metrics()
        self._draw_distribution()
        self._draw_models()
        self._draw_cluster()
        self._draw_errors()
        if self.persona_pages is None and persona_files(monitor.run_dir):
            self._init_personas()
        elif self.persona_pages is False and self._persona_stamp != _stamp(self._persona_failed_path):
            self._switch_population()  # the damaged file changed (rewritten, or finished writing): try again

    def _draw_clock(self) -> None:
        monitor = self.monitor
        self.elapsed.set_text(fmt_seconds(monitor.now()))
        rates, eta = monitor.rates(), monitor.eta()
        self.stats["rate"].set_text(fmt_count(rates["agents"]))
        self.stats["eta"].set_text(f"{fmt_seconds(eta['step'])} / {fmt_seconds(eta['run'])}")
        self.eta_label.set_text(f"over the whole run: {fmt_count(rates['agents'])} agents/s, {fmt_count(rates['calls'])} calls/s · "
                                f"ETA current step {fmt_seconds(eta['step'])}, run {fmt_seconds(eta['run'])}")
        for row in monitor.step_rows():
            widgets = self.step_widgets.get(row["id"])
            if widgets:
                widgets["status"].set_text(row["status"])
                widgets["status"].props(f"color={STATUS_COLORS.get(row['status'], 'grey-6')}")
                widgets["iteration"].set_text(row["iteration"])
                widgets["progress"].set_value(round(row["progress"], 3))
                widgets["elapsed"].set_text(fmt_seconds(row["elapsed"]) if row["elapsed"] else "")

    def _draw_plan(self) -> None:
        from nicegui import ui

        problems = self.monitor.file_problems()
        self.plan_note.set_text("\n".join(problems))
        self.plan_note.set_visibility(bool(problems))
        if self.step_widgets or not self.monitor.steps:
            return
        with self.plan_rows:
            for row in self.monitor.steps:
                line = ui.row().classes("w-full items-center gap-2 py-1 px-1 no-wrap cursor-pointer hover:bg-slate-50 rounded step-row").mark(f"step-row:{row['id']}")
                line.on("click", lambda _, step_id=row["id"]: self.show_source(step_id))
                with line:
                    ui.element("div").style(f"width: {row['depth'] * 1.25}rem; flex: none")
                    icon = {"repeat": "repeat", "for": "repeat", "if": "call_split", "ask": "forum",
                            "record": "insights"}.get(row["op"], "chevron_right")
                    ui.icon(icon, size="xs").classes("text-slate-500")
                    ui.label(row["label"]).classes("mono text-sm text-slate-800 truncate flex-1 min-w-0").tooltip(row["id"])
                    iteration = ui.label("").classes("mono text-xs text-slate-500 w-24 text-right")
                    progress = ui.linear_progress(0, show_value=False, size="8px").classes("w-28").props("rounded instant-feedback")
                    elapsed = ui.label("").classes("mono text-xs text-slate-600 w-16 text-right")
                    status = ui.badge("pending", color="grey-6").classes("w-20 justify-center step-status").mark(f"step-status:{row['id']}")
                self.step_widgets[row["id"]] = {"status": status, "iteration": iteration, "progress": progress, "elapsed": elapsed}

    def show_source(self, step_id: str) -> None:
        text = self.monitor.source_of(step_id)
        self.source.set_text(f"{step_id}\n{text}" if text else f"{step_id}: the scenario file is not readable from here")
        self.source.set_visibility(True)

    def _draw_throughput(self) -> None:
        points = self.monitor.throughput
        self.throughput.options["series"][0]["data"] = [[round(t, 3), round(a, 1)] for t, a, _ in points]
        self.throughput.options["series"][1]["data"] = [[round(t, 3), round(c, 1)] for t, _, c in points]
        self.throughput.update()

    def _draw_metrics(self) -> None:
        from nicegui import ui

        series = self.monitor.metric_series()
        self.no_metrics.set_visibility(not series)
        for name, (xs, ys) in series.items():
            chart = self.metric_charts.get(name)
            if chart is None:
                with self.metric_box:
                    chart = ui.echart(_line_chart(name, [name])).classes("w-full h-52 metric-chart").mark(f"metric:{name}")
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

    def _draw_models(self) -> None:
        rows = []
        for m in self.monitor.model_rows():
            latency = "—" if m["latency_p50"] is None else f"{m['latency_p50']:.2f} / {m['latency_p95']:.2f} s"
            rows.append({"model": m["model"], "provider": m["provider"], "in_flight": m["in_flight"],
                         "calls": fmt_count(m["calls"]),
                         "retries": m["retries"], "failures": m["failures"], "tokens_in": fmt_count(m["tokens_in"]),
                         "tokens_out": fmt_count(m["tokens_out"]), "latency": latency, "cost": fmt_cost(m["cost_usd"])})
        self.models.rows = rows
        self.models.update()

    def _draw_cluster(self) -> None:
        from nicegui import ui

        state = self.monitor.state
        self.executor.set_text(f"executor: {state.executor}" if state.executor else "")
        for row in self.monitor.cluster_rows():
            widgets = self.shard_widgets.get(row["population"])
            if widgets is None:
                with self.cluster:
                    header = ui.label("").classes("text-sm font-medium text-slate-700")
                    grid = ui.element("div").classes("w-full grid gap-2").style("grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr))")
                    bars, cells = [], []
                    with grid:
                        for shard in range(min(row["shards"], 64)):
                            with ui.column().classes("gap-0"):
                                name = ui.label(f"shard {shard}").classes("text-[10px] text-slate-500 mono")
                                bars.append(ui.linear_progress(0, show_value=False, size="10px").props("rounded instant-feedback color=teal"))
                                where = ui.label("").classes("text-[10px] text-slate-600 mono leading-tight whitespace-pre-line break-words").mark(f"shard:{row['population']}/{shard}")
                            cells.append((name, where))
                    widgets = self.shard_widgets[row["population"]] = {"header": header, "bars": bars, "cells": cells}
            done = row["shards_done"] if self.monitor.running else (row["shards"] if state.steps_done else 0)
            restarted = "".join(f" · shard {r['shard']} died and was restarted from checkpoint {r['from_checkpoint']}"
                                f" ({r['iteration']})" for r in row.get("restarts", []))
            widgets["header"].set_text(f"{row['population']}: {fmt_count(row['agents'])} agents in {row['shards']} shard(s)"
                                       f" · {done}/{row['shards']} done in the current step"
                                       + (" (first 64 shown)" if row["shards"] > 64 else "") + restarted)
            for shard, bar in enumerate(widgets["bars"]):
                finished = bool(row["shard_agents"][shard]) if shard < len(row["shard_agents"]) else False
                bar.set_value(1.0 if finished or (not self.monitor.running and state.steps_done) else 0.0)
            for (name, where), info in zip(widgets["cells"], row["shard_info"]):
                restarted = info["restarts"]
                name.set_text(f"shard {info['shard']}" + (f" · restarted ×{restarted}" if restarted else ""))
                name.classes(replace="text-[10px] mono " + ("text-red-700 font-semibold" if restarted else "text-slate-500"))
                if "node" in info:
                    address = " ".join(x for x in (info.get("ip"), info.get("host")) if x)
                    where.set_text(f"node {short_node(info['node'])} {address}\n{fmt_count(info.get('agents'))} agents\n"
                                   f"{fmt_bytes(info.get('bytes'))} cols · {fmt_bytes(info.get('rss'))} RSS")
        nodes = self.monitor.node_rows()
        if nodes == self.nodes_drawn:
            return
        self.nodes_drawn = nodes
        self.nodes.clear()
        with self.nodes:
            for node in nodes:
                address = " ".join(x for x in (node["ip"], node["host"]) if x)
                ui.label(f"node {short_node(node['node'])} {address}: {len(node['shards'])} shard(s), "
                          f"{fmt_count(node['agents'])} agents, {fmt_bytes(node['bytes'])} cols, "
                          f"{fmt_bytes(node['rss'])} RSS").mark("node")

    def _draw_errors(self) -> None:
        errors = self.monitor.errors
        self.no_errors.set_visibility(not errors)
        self.errors.set_visibility(bool(errors))
        self.errors.rows = [dict(e, n=i, agent="" if e["agent"] is None else e["agent"]) for i, e in enumerate(errors)]
        self.errors.update()
        failed = next((e for e in errors if e["kind"] == "run"), None)
        if failed and failed["source"]:
            self._show_error(failed)

    def _show_error(self, error: dict) -> None:
        if error.get("source"):
            self.error_source.set_text(f"{error.get('where', '')}\n{error['source']}")
            self.error_source.set_visibility(True)

    # ------------------------------------------------------------ actions
    def control(self, action: str) -> None:
        from nicegui import ui

        try:
            request_control(self.monitor.run_dir, action)
        except OSError as e:  # a read-only run directory, a full disk: say so on the page
            reason = e.strerror or str(e)
            ui.notify(f"cannot {action} the run: control.json cannot be written in {self.monitor.run_dir} ({reason})",
                      type="negative")
            return
        ui.notify({"pause": "pause requested: the run pauses after the current step",
                   "resume": "resume requested", "stop": "stop requested: the run ends after the current step"}[action])

    async def inspect(self) -> None:
        from nicegui import run, ui

        if self.agent_id.value is None:
            return
        agent = int(self.agent_id.value)
        found = await run.io_bound(find_agent, self.monitor, agent, self.population.value or "")
        self.agent_view.clear()
        with self.agent_view:
            for problem in found.get("problems", ()):
                ui.label(problem).classes("text-sm text-red-700").mark("agent-problem")
            if not found["persona"] and not found["answers"]:
                ui.label(f"no agent {agent} in this run (yet)").classes("text-sm text-slate-500")
                return
            ui.label(f"agent {agent}").classes("font-semibold")
            if found["persona"]:
                _pairs(found["persona"])
            if found.get("state"):
                ui.label(f"state and answers at checkpoint {found['checkpoint']}").classes("text-xs text-slate-500")
                _pairs(found["state"])
            if found.get("memory"):
                ui.label(f"memory at checkpoint {found['checkpoint']}").classes("text-xs text-slate-500")
                for entry in found["memory"]:
                    ui.label(f"{entry['role']}: {entry['text']}").classes(
                        "mono text-xs whitespace-pre-wrap bg-slate-50 p-2 rounded w-full").mark("memory")
            for step, prompt in found["prompts"].items():
                ui.label(f"prompt of {step[5:]} (template)").classes("text-xs text-slate-500")
                ui.label(prompt).classes("mono text-xs whitespace-pre-wrap bg-slate-50 p-2 rounded w-full")
            columns = [{"name": k, "label": k, "field": k, "align": "left"}
                       for k in ("iteration", "step", "value", "reply", "error", "prompt_hash")]
            rows = [{k: ("" if a.get(k) is None else str(a.get(k))) for k in ("iteration", "step", "value", "reply", "error", "prompt_hash")}
                    for a in found["answers"]]
            ui.table(columns=columns, rows=rows, row_key="iteration").props("flat dense wrap-cells").classes("w-full").mark("answers")

    def _init_personas(self) -> None:
        files = persona_files(self.monitor.run_dir)
        if len(files) > 1:
            self.population.set_options({name: name for name in files}, value=next(iter(files)))
            self.population.set_visibility(True)
            self.population.on_value_change(lambda: self._switch_population())
        self._switch_population()

    def _switch_population(self) -> None:
        files = persona_files(self.monitor.run_dir)
        path = files.get(self.population.value or "") or next(iter(files.values()))
        try:
            self.persona_pages = PersonaPages(path)
        except UNREADABLE as e:  # a damaged file: the persona table says so, the rest of the page goes on
            self.persona_pages = False  # tried: retried only when the file changes
            self._persona_failed_path, self._persona_stamp = path, _stamp(path)
            self._personas_failed(unreadable(path, e, self.monitor.run_dir))
            return
        self.personas.columns = [{"name": c, "label": c, "field": c, "align": "left"} for c in self.persona_pages.columns]
        self.load_personas(0)

    def load_personas(self, number: int) -> None:
        if not self.persona_pages:
            return
        try:
            page = self.persona_pages.page(number, self.filter.value or "")
        except FilterError as e:
            self.filter_error.set_text(str(e))
            return
        except UNREADABLE as e:
            self._personas_failed(unreadable(self.persona_pages.path, e, self.monitor.run_dir))
            return
        self.filter_error.set_text("")
        self.personas_error.set_visibility(False)
        self.persona_page = page["page"]
        self.personas.rows = [{k: _shown(v) for k, v in row.items()} for row in page["rows"]]
        self.personas.update()
        self.page_label.set_text(f"page {page['page'] + 1} of {page['pages']} · {page['total']:,} agents")

    def _personas_failed(self, message: str) -> None:
        self.personas_error.set_text(message)
        self.personas_error.set_visibility(True)
        self.personas.rows = []
        self.personas.update()
        self.page_label.set_text("")


def root_for(monitor: MonitorState):
    """The NiceGUI root function: each browser tab gets its own Page over the shared state."""
    def root() -> None:
        Page(monitor).build()
    return root


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
          watch_pid: int | None = None) -> None:
    """Serve the page until Ctrl-C (or until process `watch_pid`, the run that started us, is gone)."""
    from nicegui import app, ui

    from .auth import TokenGate, exposed

    if exposed(host):
        if not token:
            raise ValueError(f"the monitor on {host} needs a token")
        app.add_middleware(TokenGate, token=token)
    monitor = MonitorState(run_dir)
    if watch_pid:
        def check_parent() -> None:
            if os.getppid() != watch_pid:
                app.shutdown()
        app.timer(1.0, check_parent)
    ui.run(root_for(monitor), host=host, port=port, reload=False, show=False, title="Populace monitor",
           favicon="📈", show_welcome_message=False, uvicorn_logging_level="warning")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m populace.runtime.monitor")
    parser.add_argument("run_dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--watch-pid", type=int, help="exit when this process (the run) is gone")
    args = parser.parse_args(argv)
    # The token travels in the environment, never on the command line (other users can read argv).
    serve(args.run_dir, args.host, args.port, os.environ.get("POPULACE_MONITOR_TOKEN"), args.watch_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
