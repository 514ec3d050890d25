"""Show a run's progress on the terminal, from its events (the same fold the monitor uses).

In: events, one at a time. Out: a rich live status on a terminal (step and iteration, agents done,
agents per second, model calls, errors), plain lines otherwise, nothing with --quiet; and the
summary table at the end.
"""
from __future__ import annotations

import sys

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from populace.runtime.store.events import RunState


class Progress:
    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.state = RunState()
        self.live = None
        self.tty = self.console.is_terminal

    def __enter__(self):
        if not self.quiet and self.tty:
            self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def __call__(self, event: dict) -> None:
        self.state.apply(event)
        if self.quiet:
            return
        if self.live:
            self.live.update(self._render())
        elif event["type"] == "step_finished":
            e = event
            rate = f", {e['agents_per_second']:,.0f} agents/s" if e.get("agents_per_second") else ""
            self.console.print(f"{e['step']}{e.get('iteration', '')}: {e.get('agents', 0):,} agents in "
                               f"{e['seconds']:.2f}s{rate}" + (f", {e['errors']} errors" if e.get("errors") else ""),
                               highlight=False, markup=False)
        elif event["type"] == "agent_errors":
            first = event["samples"][0]
            self.console.print(f"  {event['count']} agent errors, e.g. agent {first['agent']}: {first['error']}",
                               highlight=False, markup=False)
        elif event["type"] == "budget_reached":
            self.console.print(f"budget reached: ${event.get('spent_usd', 0):,.4f} of ${event.get('budget_usd') or 0:,.2f} "
                               f"spent; stopped in {event.get('step', '?')}{event.get('iteration', '')} (the calls it "
                               "made are cached: a resume with a larger --budget does not pay for them again)",
                               highlight=False, markup=False)
        elif event["type"] == "run_failed":
            self.console.print(f"run failed: {event['error']}", highlight=False, markup=False)
        elif event["type"] in ("run_paused", "run_resumed", "stop_requested"):
            what = {"run_paused": "paused (resume from the monitor, or control.json)", "run_resumed": "resumed",
                    "stop_requested": "stop requested: ending the run"}[event["type"]]
            self.console.print(f"{what} before {event.get('before', '?')}{event.get('iteration', '')}",
                               highlight=False, markup=False)

    def _render(self):
        s = self.state
        table = Table.grid(padding=(0, 2))
        rate = s.agents_done / s.seconds if s.seconds else 0
        table.add_row("step", Text(s.current or "starting"))
        if s.step_total:
            width = 30
            filled = int(width * s.step_done / s.step_total)
            table.add_row("this step", Text(f"[{'#' * filled}{'.' * (width - filled)}] {s.step_done:,} / {s.step_total:,} agents"))
        table.add_row("agents done", f"{s.agents_done:,}  ({rate:,.0f}/s)")
        table.add_row("model calls", f"{s.calls:,}   tokens {s.tokens_in:,} in / {s.tokens_out:,} out")
        in_flight = sum(v for v in s.in_flight.values() if isinstance(v, (int, float)))
        if in_flight:  # only while an ask to a remote model runs (sampled once a second)
            table.add_row("in flight", f"{in_flight:,.0f} requests")
        cost = sum(m.get("cost_usd") or 0 for m in s.by_model.values() if isinstance(m, dict))
        if s.budget_usd is not None:
            table.add_row("cost so far", f"${cost:,.4f} of the ${s.budget_usd:,.2f} budget ({cost / s.budget_usd:.0%})")
        elif cost:
            table.add_row("cost so far", f"${cost:,.4f}")
        if s.restarts:
            table.add_row("restarts", f"{len(s.restarts)} shard restart(s)")
        table.add_row("errors", f"{s.errors:,}")
        table.add_row("elapsed", f"{s.seconds:.1f}s")
        return table


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console(file=sys.stdout)
    table = Table(title=f"{summary['scenario']}: {summary['status']}", show_header=False)
    table.add_row("time", f"{summary['seconds']:.2f} s")
    where = summary["executor"] + (f" ({summary['workers']} worker processes)" if summary.get("workers") else "")
    table.add_row("agents", f"{summary['agents']:,} in {sum(summary['shards'].values())} shard(s) on {where}")
    table.add_row("steps", f"{summary['steps']:,} ({summary['agent_steps']:,} agent-steps)")
    table.add_row("model calls", f"{summary['calls']:,}")
    table.add_row("tokens", f"{summary['tokens_in']:,} in / {summary['tokens_out']:,} out")
    cost = summary["cost_usd"]
    budget = summary.get("budget_usd")
    of_budget = f" of the ${budget:,.2f} budget" if budget is not None and cost is not None else ""
    table.add_row("cost", ("unknown (no price)" if cost is None else f"${cost:,.4f}{of_budget}")
                  + (" — the budget stopped the run" if summary.get("stopped_by") == "budget" else ""))
    for name, m in sorted((summary.get("models") or {}).items()):
        if "prompt_cache_hit_rate" in m:
            saved = m.get("prompt_cache_saved_usd")
            table.add_row(f"prompt cache ({name})", f"{m['prompt_cache_hit_rate']:.0%} of input tokens read from the "
                          "provider's cache" + (f", saved ${saved:,.4f}" if saved is not None else ""))
    answers, errors = summary.get("answers", 0), summary["errors"]
    share = f" of {answers:,} answers ({errors / answers:.1%})" if answers else ""
    table.add_row("failed answers", f"{errors:,}{share}" + (" — why: failures.json" if errors else ""))
    table.add_row("run directory", Text(summary["run_dir"], overflow="fold"))
    console.print(table)
    print_results(summary, console)
    # Also on a line of its own, never cut, for copying and for scripts.
    console.print(Text(f"run directory: {summary['run_dir']}"), soft_wrap=True)
    if summary.get("error"):  # said even with --quiet: a failed run must say why
        console.print(Text(f"error: {summary['error']}"), soft_wrap=True)


def print_results(summary: dict, console: Console, rows: int = 5) -> None:
    """The last rows of each records table, and the line of Python that loads the run."""
    import os

    import pyarrow.parquet as pq

    bins = [p[len("records/"):-len(".parquet")] for p in summary.get("tables", []) if p.count(".") > 1]
    for path in summary.get("tables", []):
        name = path[len("records/"):-len(".parquet")]
        if name in bins:
            continue  # histograms: one row per bin, for plots; named below
        try:
            data = pq.read_table(os.path.join(summary["run_dir"], path))
        except (OSError, ValueError):
            continue
        columns = [c for c in data.column_names if c != "step"]
        shown = Table(title=f"{name} (last {min(rows, data.num_rows)} of {data.num_rows} rows)", title_justify="left")
        for c in columns:
            shown.add_column(c, justify="right", overflow="fold")
        for row in data.slice(max(0, data.num_rows - rows)).to_pylist():
            shown.add_row(*[_cell(row[c]) for c in columns])
        console.print(shown)
    if bins:
        console.print(Text("histograms, one row per bin: " + ", ".join(f"records/{b}.parquet" for b in bins)), soft_wrap=True)
    names = [p[len("records/"):-len(".parquet")] for p in summary.get("tables", []) if p.count(".") == 1]
    table = "run.metrics" if "metrics" in names or not names else f"run.records[{names[0]!r}]"
    console.print(Text(f"load it in Python: import populace; run = populace.load({summary['run_dir']!r}); {table}"),
                  soft_wrap=True)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
