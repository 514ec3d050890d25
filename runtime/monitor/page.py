"""The monitor: a live NiceGUI page for one run directory (a run in progress or finished).

In: a run directory, a host and a port. Out: a web page served until Ctrl-C. Every open page
polls one shared `MonitorState` (data.py) twice a second; the state tails events.jsonl and
folds it with the same `RunState` the CLI uses. Controls write control.json (`request_control`),
which the driver obeys between steps. Beyond 127.0.0.1 every request needs the token
(auth.py); the cards are in agents.py and results.py. Nothing from the environment is ever put on the page.

    python -m populace.runtime.monitor RUN_DIR [--host 127.0.0.1] [--port 8080]
"""
from __future__ import annotations

import argparse
import os
import sys

from .data import MonitorState
from .agents import AgentsPanel
from .results import ResultsPanel
from .widgets import STATUS_COLORS, fmt_bytes, fmt_cost, fmt_count, fmt_seconds, line_chart, short_node
from populace.runtime.store.rundir import request_control

TICK = 0.5  # seconds between polls of events.jsonl: live, yet cheap for a page left open all day


class Page(AgentsPanel, ResultsPanel):
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
            self.throughput = ui.echart(line_chart("", ["agents/s", "calls/s"])).classes("w-full h-56").mark("throughput")
            self.throughput.options["xAxis"] = {"type": "value", "name": "run time (s)", "nameLocation": "middle",
                                                "nameGap": 24, "scale": True}
            self.throughput.options["grid"]["bottom"] = 56
            self.throughput.options["legend"] = {"top": 0}
            self.eta_label = ui.label("").classes("text-sm text-slate-600").mark("eta")

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
        self.status.set_text("stopped: budget" if status == "stopped" and state.stopped_by == "budget" else status)
        self.status.props(f"color={STATUS_COLORS.get(status, 'grey-6')}")
        self.pause.set_enabled(status == "running")
        self.resume.set_enabled(status == "paused")
        self.stop.set_enabled(status in ("running", "paused"))
        self.stats["steps"].set_text(fmt_count(state.steps_done))
        self.stats["agents"].set_text(fmt_count(state.agents_done))
        self.stats["calls"].set_text(fmt_count(state.calls))
        self.stats["tokens"].set_text(f"{fmt_count(state.tokens_in)} / {fmt_count(state.tokens_out)}")
        cost = monitor.cost()
        budget = state.budget_usd if state.budget_usd is not None else (monitor.summary or {}).get("budget_usd")
        self.stats["cost"].set_text(fmt_cost(cost) + (f" of ${budget:,.2f} budget ({cost / budget:.0%})"
                                                      if budget and cost is not None else ""))
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
        self._draw_personas()

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
