"""What the monitor shows, read from a run directory: no NiceGUI here, so tests call it directly.

In: the path of a run directory, in progress (another process is still writing it) or finished.
Out: `MonitorState.poll()` tails events.jsonl (only the bytes added since the last poll) and folds
them with `RunState` plus what only the page needs (per-step status, throughput over time, shard
progress, retries, errors with their scenario lines); `plan_steps`, `distribution`, `find_agent`
and `persona_page` read plan.json and the Parquet files. A 1,000,000-agent run stays cheap: the
answers are read one column at a time, an agent by row-group statistics, a persona page by one
row group.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from populace.runtime.store.events import EventTail, RunState
from populace.runtime.store.rundir import ask_file

AGENT_STEP_OPS = ("ask", "set_state", "tell", "broadcast")  # ops that emit step_started/step_finished
ENDED = ("finished", "stopped", "failed")
PAGE_ROWS = 20
MAX_POINTS = 600  # throughput points kept for the chart
MAX_ERRORS = 200


# ---------------------------------------------------------------- the plan as rows

def plan_steps(plan: dict) -> list[dict]:
    """The workflow in document order: one row per step with its depth, parent loops and label."""
    rows: list[dict] = []

    def walk(steps, depth, ancestors):
        for step in steps:
            row = {"id": step["id"], "op": step["op"], "depth": depth, "ancestors": ancestors,
                   "label": step_label(step), "span": step.get("span"), "count": _loop_count(step),
                   "index": len(rows)}
            rows.append(row)
            inner = ancestors + (step["id"],)
            if isinstance(step.get("body"), list):
                walk(step["body"], depth + 1, inner)
            for branch in step.get("branches", []):
                walk(branch["body"], depth + 1, inner)
            if isinstance(step.get("else"), list):
                walk(step["else"], depth + 1, inner)

    walk(plan.get("workflow", []), 0, ())
    return rows


def step_label(step: dict) -> str:
    op = step["op"]
    if op == "ask":
        return f"ask {step['population']} -> {step['output']['name']}"
    if op == "repeat":
        count = _loop_count(step)
        return f"repeat {count if count is not None else '…'}" + (f" as {step['var']}" if step.get("var") else "")
    if op == "for":
        return f"for {step['var']} in …"
    if op == "record":
        return "record " + ", ".join(item["name"] for item in step.get("items", []))
    if op == "let":
        return f"let {step['name']}"
    if op == "set_var":
        return f"{step['name']} {step['operator']} …"
    if op == "set_env":
        return f"{step['env']}.{step['field']} {step['operator']} …"
    if op == "set_state":
        return f"update {step.get('population', '')}".strip()
    if op == "tell":
        return f"tell {step['target'].get('population', '')}"
    if op == "broadcast":
        return "broadcast to " + ", ".join(step.get("populations", []))
    if op == "stop":
        return "stop when …" if step.get("scope") == "run" else "break when …"
    return op


def _loop_count(step: dict) -> int | None:
    """A loop's number of iterations when the plan fixes it (a literal count or list), else None."""
    if step["op"] == "repeat" and isinstance(step.get("count"), dict) and "lit" in step["count"]:
        return int(step["count"]["lit"])
    if step["op"] == "for" and isinstance(step.get("iterable"), dict) and isinstance(step["iterable"].get("lit"), list):
        return len(step["iterable"]["lit"])
    return None


def _label_parts(label: str) -> list[str]:
    """`[t=1, round=2]` -> ["t=1", "round=2"]."""
    inner = label.strip()[1:-1] if label.startswith("[") else ""
    return [part.strip() for part in inner.split(",") if part.strip()]


# ---------------------------------------------------------------- scenario sources

class Sources:
    """Scenario files by path, read once; a file that moved since the run shows nothing, not an error."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._lines: dict[str, list[str] | None] = {}

    def lines(self, path: str | None) -> list[str] | None:
        if not path:
            return None
        if path not in self._lines:
            text = None
            for candidate in (path, os.path.join(os.path.dirname(os.path.abspath(self.run_dir)), path)):
                try:
                    with open(candidate, encoding="utf-8", errors="replace") as f:
                        text = f.read().splitlines()
                    break
                except OSError:
                    continue
            self._lines[path] = text
        return self._lines[path]

    def excerpt(self, span: dict | None, context: int = 0) -> str:
        """Lines `span.line`..`span.end_line` (plus `context` around), numbered like a diagnostic."""
        if not span:
            return ""
        lines = self.lines(span.get("file"))
        if not lines:
            return ""
        first = max(1, span["line"] - context)
        last = min(len(lines), span.get("end_line", span["line"]) + context)
        width = len(str(last))
        return "\n".join(f"{n:>{width}} | {lines[n - 1]}" for n in range(first, last + 1))


def where(span: dict | None) -> str:
    return f"{span['file']}:{span['line']}:{span.get('column', 1)}" if span else ""


_WHERE = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?P<column>\d+): ")


# ---------------------------------------------------------------- the fold

_TEXT = ("step", "iteration", "population", "model", "error", "op", "status")
_NUMBER = ("t", "seconds", "agents", "calls", "agents_done")


def _readable(e: dict) -> dict:
    """The event with every field the page reads of the type it expects; others left out (a
    damaged or hand-edited line then lacks them, and the page shows what the rest says)."""
    out = {}
    for key, value in e.items():
        if key in _TEXT and not isinstance(value, str):
            continue
        if key in _NUMBER and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            continue
        if key == "shard" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            continue
        if key == "shards" and not (isinstance(value, dict) and all(
                isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 100_000 for n in value.values())):
            continue
        if key == "samples" and not (isinstance(value, list) and all(isinstance(x, dict) for x in value)):
            continue
        if key == "span" and not (isinstance(value, dict) and isinstance(value.get("line"), int)):
            continue
        out[key] = value
    return out


MAX_SHARDS_SHOWN = 10_000  # a damaged event may claim any number; no run has more shards than this


@dataclass
class StepInfo:
    runs: int = 0  # executions finished (events of this step)
    iteration: str = ""
    seconds: float = 0.0
    started: float | None = None  # run time (s) when the running execution began


@dataclass
class MonitorState:
    run_dir: str
    state: RunState = field(default_factory=RunState)
    plan: dict | None = None
    steps: list = field(default_factory=list)
    info: dict = field(default_factory=dict)  # step id -> StepInfo
    running: str = ""  # step id of the agent step in progress
    reached: int = -1  # highest step index seen: steps before it ran (or were skipped) at least once
    throughput: list = field(default_factory=list)  # (t, agents/s, calls/s) per finished agent step
    retries: dict = field(default_factory=dict)  # model -> retries
    failures: dict = field(default_factory=dict)  # model -> failed calls
    shard_progress: dict = field(default_factory=dict)  # population -> [agents done per shard, this step]
    shard_steps: dict = field(default_factory=dict)  # population -> [steps finished per shard]
    errors: list = field(default_factory=list)
    summary: dict | None = None
    version: int = 0  # bumped by every change: the page redraws only when it moved
    damaged: int = 0  # events that could not be read (skipped; the rest of the page still shows)
    driver: dict = field(default_factory=dict)  # {"pid", "host"} of the run's (latest) driver
    driver_lost: bool = False
    last_event_wall: float = 0.0
    latest_ask: tuple | None = None  # (step id, iteration label) of the last finished ask
    asks: list = field(default_factory=list)  # (step id, iteration, Parquet path) of every finished ask
    record_labels: list = field(default_factory=list)  # x-axis label of each record event

    def __post_init__(self):
        self.tail = EventTail(os.path.join(self.run_dir, "events.jsonl"))
        self.sources = Sources(self.run_dir)
        self._index: dict = {}
        self._last_done = 0
        self.failed_step = ""  # the step a run_failed points at
        self.plan_problem = ""  # "plan.json is missing" / "plan.json is damaged: ..." while it cannot be read

    # -- reading
    def poll(self) -> bool:
        """Fold the events written since the last poll; True when anything changed."""
        changed = False
        if self.plan is None:
            changed |= self._load_plan()
        events = self.tail.read()
        for event in events:
            self.apply(event)
        if events:
            self.last_event_wall = time.time()
            changed = True
        lost = self._driver_lost()
        if lost != self.driver_lost:
            self.driver_lost, changed = lost, True
        if self.summary is not None and self.state.status in ("running", "paused"):
            self.summary = None  # read while no event was: the events now tell a run in progress
            changed = True
        if self.summary is None and (self.state.status in ENDED or self.state.status == "pending"):
            # pending: events.jsonl missing or unreadable; a summary.json still tells how the run ended
            try:
                with open(os.path.join(self.run_dir, "summary.json"), encoding="utf-8") as f:
                    summary = json.load(f)
                if isinstance(summary, dict):  # anything else is as good as no summary
                    self.summary = summary
                    changed = True
            except (OSError, ValueError):
                pass
        if changed:
            self.version += 1
        return changed

    def _driver_lost(self) -> bool:
        """Is the run in progress by its events, while its driver's process is gone (kill -9, a
        crash, a lost machine)? Known only on the driver's own machine; elsewhere: False."""
        import socket

        pid, host = self.driver.get("pid"), self.driver.get("host")
        if self.state.status not in ("running", "paused") or not isinstance(pid, int) or host != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # it exists (another user's process): alive
            return False
        return False

    @property
    def status(self) -> str:
        """The run's status: from the events, or from summary.json when no event could be read;
        "lost" while the events say running but the driver's process is gone."""
        if self.driver_lost:
            return "lost"
        if self.state.status == "pending" and self.summary is not None:
            status = self.summary.get("status")
            return status if isinstance(status, str) and status else "pending"
        return self.state.status

    def file_problems(self) -> list[str]:
        """Core files that are missing or damaged, one line each, for a note on the page."""
        out = []
        if self.plan_problem and (self.plan_problem != "plan.json is missing" or self.state.status != "pending"
                                  or self.summary is not None):
            out.append(self.plan_problem)
        if self.state.status == "pending" and self.summary is not None:
            out.append("events.jsonl is missing or damaged: the status shown is summary.json's")
        if self.driver_lost:
            out.append(f"the run's driver (pid {self.driver.get('pid')}) is gone without ending the run: "
                       f"`populace resume {self.run_dir}` continues it from its last checkpoint")
        return out

    def _load_plan(self) -> bool:
        path = os.path.join(self.run_dir, "plan.json")
        try:
            with open(path, encoding="utf-8") as f:
                plan = json.load(f)
            steps = plan_steps(plan)
        except FileNotFoundError:
            self.plan_problem = "plan.json is missing"
            return False
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            problem = f"plan.json is damaged: {type(e).__name__}: {e}"
            changed = problem != self.plan_problem
            self.plan_problem = problem
            return changed
        self.plan, self.steps, self.plan_problem = plan, steps, ""
        self.info = {row["id"]: StepInfo() for row in self.steps}
        self._index = {row["id"]: row for row in self.steps}
        return True

    def apply(self, e: dict) -> None:
        self.state.apply(e)
        try:
            self._apply(_readable(e))
        except (KeyError, TypeError, AttributeError, ValueError, IndexError):
            # A damaged event (hand-edited, or from a crash): the page shows what the others say.
            self.damaged += 1

    def _apply(self, e: dict) -> None:
        kind = e["type"]
        if self.plan is None and kind != "run_started":
            self._load_plan()
        step = e.get("step")
        if kind == "run_started":
            driver = {k: e.get(k) for k in ("pid", "host")}
            self.driver = driver if isinstance(driver["pid"], int) and isinstance(driver["host"], str) else {}
            self.shard_steps = {pop: [0] * n for pop, n in e.get("shards", {}).items()}
            self.shard_progress = {pop: [0] * n for pop, n in e.get("shards", {}).items()}
        elif kind == "step_started":
            self.running = step
            self._reach(step, e.get("iteration", ""))
            self._info(step).started = e.get("t", 0.0)
            pop = e.get("population")
            if pop in self.shard_progress:
                self.shard_progress[pop] = [0] * len(self.shard_progress[pop])
            self._last_done = 0
        elif kind == "shard_finished":
            pop, shard = e["population"], e["shard"]
            done = e["agents_done"] - self._last_done
            self._last_done = e["agents_done"]
            if pop in self.shard_progress and shard < len(self.shard_progress[pop]):
                self.shard_progress[pop][shard] = done
                self.shard_steps[pop][shard] += 1
        elif kind == "step_finished":
            info = self._info(step)
            info.runs += 1
            info.seconds += e.get("seconds", 0.0) or 0.0
            info.started = None
            self._reach(step, e.get("iteration", ""))
            self.running = ""
            seconds = e.get("seconds") or 0.0
            if seconds > 0:
                self.throughput.append((e.get("t", 0.0), e.get("agents", 0) / seconds, e.get("calls", 0) / seconds))
                del self.throughput[:-MAX_POINTS]
            if e.get("op") == "ask":
                self.latest_ask = (step, e.get("iteration", ""))
                self.asks.append((step, e.get("iteration", ""), self.latest_ask_file()))
        elif kind == "record":
            self.record_labels.append(", ".join(_label_parts(e.get("iteration", ""))) or str(len(self.record_labels) + 1))
            self._info(step).runs += 1
            self._reach(step, e.get("iteration", ""))
        elif kind == "stopped_when":
            self._info(step).runs += 1
            self._reach(step, e.get("iteration", ""))
        elif kind == "model_retry":
            self.retries[e.get("model", "?")] = self.retries.get(e.get("model", "?"), 0) + 1
        elif kind == "model_failed":
            self.failures[e.get("model", "?")] = self.failures.get(e.get("model", "?"), 0) + 1
            self._error("model", step, e.get("iteration", ""), e.get("agent"), f"{e.get('model')}: {e.get('error', '')}",
                        self._span(step))
        elif kind == "agent_errors":
            for sample in e.get("samples", []):
                self._error("agent", step, e.get("iteration", ""), sample.get("agent"), sample.get("error", ""),
                            e.get("span") or self._span(step))
        elif kind == "run_failed":
            message = e.get("error", "")
            span, match = None, _WHERE.match(message)
            if match:
                line = int(match["line"])
                span = {"file": match["file"], "line": line, "column": int(match["column"]), "end_line": line}
                message = message[match.end():]
            self.failed_step = self._step_at(span) or self.running
            self._error("run", self.failed_step, "", None, message, span or self._span(self.failed_step))
        elif kind == "run_finished":
            self.running = ""

    def _info(self, step_id: str) -> StepInfo:
        return self.info.setdefault(step_id, StepInfo())

    def _span(self, step_id: str | None) -> dict | None:
        row = self._index.get(step_id) if step_id and self.plan else None
        return row["span"] if row else None

    def _step_at(self, span: dict | None) -> str:
        """The innermost step whose span holds the line of an error message."""
        if not span:
            return ""
        best = ""
        for row in self.steps:
            s = row["span"] or {}
            if s.get("line", 0) <= span["line"] <= s.get("end_line", s.get("line", 0)):
                best = row["id"]
        return best

    def _reach(self, step_id: str, iteration: str) -> None:
        row = self._index.get(step_id) if self.plan else None
        if row is None:
            return
        self.reached = max(self.reached, row["index"])
        parts = _label_parts(iteration)
        self._info(step_id).iteration = ", ".join(parts)
        loops = [a for a in row["ancestors"] if self._index[a]["op"] in ("repeat", "for")]
        for depth, loop in enumerate(loops):
            if depth < len(parts):
                self._info(loop).iteration = parts[depth]

    def _error(self, kind, step, iteration, agent, message, span) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"kind": kind, "step": step or "", "iteration": iteration, "agent": agent,
                                "error": message, "where": where(span), "source": self.sources.excerpt(span)})

    # -- what the panels show
    def now(self) -> float:
        """Run time in seconds: the last event's time, plus the wall time since it while the run goes on."""
        if self.state.status in ENDED or not self.last_event_wall:
            return self.state.seconds
        return self.state.seconds + max(0.0, time.time() - self.last_event_wall)

    def step_status(self, row: dict) -> str:
        status, info = self.state.status, self.info.get(row["id"], StepInfo())
        ran = info.runs > 0 or row["index"] < self.reached
        if status == "finished":
            return "finished"
        if status in ("stopped", "failed"):
            if status == "failed" and (row["id"] == self.failed_step
                                       or row["id"] in self._index.get(self.failed_step, {}).get("ancestors", ())):
                return "failed"
            if status == "stopped" and row["op"] in ("repeat", "for") and row["count"] and ran \
                    and _iteration_number(info.iteration) < row["count"]:
                return "stopped"  # stopped before its last iteration (its steps show what ran)
            return "done" if ran or row["index"] <= self.reached else "not run"
        active = self.running and (row["id"] == self.running or row["id"] in self._index.get(self.running, {}).get("ancestors", ()))
        if active or (row["op"] in ("repeat", "for") and self._inside(row)):
            return "paused" if status == "paused" else "running"
        return "done" if ran else "pending"

    def _inside(self, loop_row: dict) -> bool:
        """The run is somewhere in this loop's body (between its first and last step)."""
        last = loop_row["index"]
        for row in self.steps[loop_row["index"] + 1:]:
            if loop_row["id"] not in row["ancestors"]:
                break
            last = row["index"]
        return self.state.status in ("running", "paused") and loop_row["index"] < self.reached <= last

    def step_rows(self) -> list[dict]:
        """Plan rows with status, current iteration, progress (0..1) and elapsed seconds."""
        out = []
        for row in self.steps:
            info = self.info.get(row["id"], StepInfo())
            status = self.step_status(row)
            elapsed = info.seconds
            if info.started is not None and row["id"] == self.running and self.state.status not in ENDED:
                elapsed += max(0.0, self.now() - info.started)
            if status == "finished":
                progress = 1.0
            elif row["id"] == self.running and self.state.step_total:
                progress = self.state.step_done / self.state.step_total
            elif row["op"] in ("repeat", "for") and row["count"]:
                number = _iteration_number(info.iteration)
                progress = min(1.0, max(0, number - (1 if status in ("running", "paused") else 0)) / row["count"])
            else:
                progress = 1.0 if status == "done" else 0.0
            out.append(dict(row, status=status, iteration=info.iteration, runs=info.runs, elapsed=elapsed,
                            progress=progress))
        return out

    def eta(self) -> dict:
        """Seconds left for the running step and for the run (None when unknown)."""
        step_eta = run_eta = None
        now = self.now()
        if self.running and self.state.status == "running":
            info = self.info.get(self.running, StepInfo())
            in_step = now - (info.started or now)
            if self.state.step_done:
                step_eta = in_step * (self.state.step_total - self.state.step_done) / self.state.step_done
            elif info.runs:
                step_eta = max(0.0, info.seconds / info.runs - in_step)
        if self.state.status in ENDED:
            return {"step": None, "run": 0.0}
        planned = done = 0
        for row in self.steps:
            if row["op"] not in AGENT_STEP_OPS:
                continue
            times = 1
            for loop in row["ancestors"]:
                loop_row = self._index[loop]
                if loop_row["op"] in ("repeat", "for"):
                    if loop_row["count"] is None:
                        return {"step": step_eta, "run": None}
                    times *= loop_row["count"]
            planned += times
            done += self.info.get(row["id"], StepInfo()).runs
        if planned and done and now > 0:
            run_eta = now * (planned - done) / done
        return {"step": step_eta, "run": run_eta}

    def rates(self) -> dict:
        """Agents and calls per second over the whole run so far."""
        now = self.now()
        if now <= 0:
            return {"agents": 0.0, "calls": 0.0}
        return {"agents": self.state.agents_done / now, "calls": self.state.calls / now}

    def model_rows(self) -> list[dict]:
        """Per model: calls in flight (sampled during an ask), calls, retries, failures, tokens,
        latency p50/p95 and cost. Live from `models` events (after every ask); summary.json's
        latency (over every call, not only the most recent) once the run has ended. Runs written
        before `models` events existed count retries and failures from their (capped) events."""
        models = (self.plan or {}).get("models", {})
        summary_models = (self.summary or {}).get("models", {})
        state = self.state
        names = sorted(set(state.by_model) | set(self.retries) | set(self.failures) | set(state.in_flight))
        rows = []
        for name in names:
            counts = state.by_model.get(name, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
            final = summary_models.get(name, {})
            model = models.get(name, {})
            rows.append({
                "model": name, "provider": model.get("provider", ""),
                "in_flight": state.in_flight.get(name, 0) if state.status in ("running", "paused") else 0,
                "calls": counts.get("calls", 0), "retries": counts.get("retries", self.retries.get(name, 0)),
                "failures": counts.get("failures", self.failures.get(name, 0)),
                "tokens_in": counts.get("tokens_in", 0), "tokens_out": counts.get("tokens_out", 0),
                "latency_p50": final.get("latency_p50_s", counts.get("latency_p50_s")),
                "latency_p95": final.get("latency_p95_s", counts.get("latency_p95_s")),
                "cost_usd": counts["cost_usd"] if "cost_usd" in counts else model_cost(model, counts),
            })
        return rows

    def cost(self) -> float | None:
        costs = [row["cost_usd"] for row in self.model_rows()]
        return None if any(c is None for c in costs) else sum(costs)

    def cluster_rows(self) -> list[dict]:
        """Per population: its shards' progress in the current step and, per shard (from the latest
        `shards` event), the node it runs on, its agents, bytes and process RSS, and its restarts."""
        rows = []
        for pop, count in sorted(self.state.shards.items()):
            progress = self.shard_progress.get(pop, [])
            active = self.running and self._index.get(self.running, {}) and self.state.current.startswith(self.running)
            restarts = [r for r in self.state.restarts if r.get("population") == pop]
            info = {s.get("shard"): s for s in self.state.shard_info.get(pop, [])}
            shards = [dict(info.get(i, {}), shard=i, restarts=sum(1 for r in restarts if r.get("shard") == i))
                      for i in range(min(count, MAX_SHARDS_SHOWN))]
            rows.append({"population": pop, "agents": self.state.agents.get(pop, 0), "shards": count,
                         "shards_done": sum(1 for p in progress if p), "shard_agents": list(progress),
                         "shard_steps": list(self.shard_steps.get(pop, [])), "in_step": bool(active),
                         "restarts": restarts, "shard_info": shards})
        return rows

    def node_rows(self) -> list[dict]:
        """The machines: per Ray node (or "local"), its address, host, shards, agents and bytes."""
        nodes: dict = {}
        for pop, shards in sorted(self.state.shard_info.items()):
            for s in shards:
                node = nodes.setdefault(s.get("node", "?"), {"node": s.get("node", "?"), "ip": s.get("ip", ""),
                                                             "host": s.get("host", ""), "shards": [], "agents": 0,
                                                             "bytes": 0, "rss": {}})
                node["shards"].append(f"{pop}/{s.get('shard')}")
                node["agents"] += s.get("agents") or 0
                node["bytes"] += s.get("bytes") or 0
                if s.get("rss") is not None:
                    node["rss"][s.get("pid")] = s["rss"]  # shards sharing a process share its RSS
        return [dict(n, rss=sum(n["rss"].values()) if n["rss"] else None) for n in nodes.values()]

    def metric_series(self) -> dict:
        """Every numeric recorded value, by name: (x labels, values), one point per executed record."""
        loop_vars = self._loop_vars()
        series: dict[str, tuple[list, list]] = {}
        for label, values in zip(self.record_labels, self.state.records):
            for name, value in values.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or name in loop_vars:
                    continue
                xs, ys = series.setdefault(name, ([], []))
                xs.append(label)
                ys.append(None if isinstance(value, float) and not math.isfinite(value) else value)
        return series

    def _loop_vars(self) -> set:
        names = set()
        for row in self.steps:
            if row["op"] in ("repeat", "for"):
                step = self._find(row["id"])
                if step and step.get("var"):
                    names.add(step["var"])
        return names

    def _find(self, step_id: str) -> dict | None:
        def walk(steps):
            for step in steps:
                if step["id"] == step_id:
                    return step
                for body in [step.get("body"), step.get("else")] + [b["body"] for b in step.get("branches", [])]:
                    if isinstance(body, list):
                        found = walk(body)
                        if found:
                            return found
            return None
        return walk((self.plan or {}).get("workflow", []))

    def latest_ask_file(self) -> str | None:
        if not self.latest_ask:
            return None
        step, label = self.latest_ask
        return os.path.join(self.run_dir, ask_file(step, label))

    def source_of(self, step_id: str, context: int = 1) -> str:
        row = self._index.get(step_id) if self.plan else None
        return self.sources.excerpt(row["span"] if row else None, context)

    def ask_files(self) -> list[tuple[str, str, str]]:
        """(step id, iteration, path) of every finished ask, oldest first."""
        return list(self.asks)


def _iteration_number(part: str) -> int:
    try:
        return int(part.split("=", 1)[1])
    except (IndexError, ValueError):
        return 0


def model_cost(model: dict, counts: dict) -> float | None:
    """Dollars so far from the plan's prices (per million tokens); offline models cost nothing."""
    if model.get("provider") in ("mock", "python"):
        return 0.0
    price = model.get("price")
    if not price:
        return None
    return (counts.get("tokens_in", 0) * price.get("input", 0) + counts.get("tokens_out", 0) * price.get("output", 0)) / 1e6


# ---------------------------------------------------------------- Parquet: answers and agents

UNREADABLE = (OSError, ValueError, KeyError, pa.ArrowException)  # a truncated or hand-edited file


def unreadable(path: str, error: BaseException, run_dir: str | None = None) -> str:
    """`asks/ask.guess/round=3.parquet cannot be read: <reason>`: one line for the panel that failed."""
    name = os.path.relpath(path, run_dir) if run_dir else os.path.basename(path)
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{name} cannot be read: {reason}"


def distribution(path: str, bins: int = 20, top: int = 20) -> dict:
    """The `value` column of one ask file as a histogram (numbers) or category counts (the rest).

    Reads that one column only (8 bytes an agent for numbers); records and lists are not charted.
    A file that cannot be read gives `{"kind": "error", "error": ...}`.
    """
    try:
        column = pq.read_table(path, columns=["value"]).column("value")
    except UNREADABLE as e:
        run_dir = path[:path.rindex(os.sep + "asks" + os.sep)] if os.sep + "asks" + os.sep in path else None
        return {"kind": "error", "error": unreadable(path, e, run_dir),
                "missing": 0, "count": 0}
    missing = column.null_count
    present = pc.drop_null(column)
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if len(present) == 0:
            return {"kind": "histogram", "edges": [], "counts": [], "missing": missing, "count": 0}
        import numpy as np

        values = present.to_numpy()
        if pa.types.is_floating(kind):
            values = values[np.isfinite(values)]
        low, high = float(values.min()), float(values.max())
        if pa.types.is_integer(kind) and high - low + 1 <= bins:
            edges = np.arange(low, high + 2) - 0.5  # one bar per integer
        else:
            edges = np.linspace(low, high if high > low else low + 1, bins + 1)
        counts, edges = np.histogram(values, bins=edges)
        return {"kind": "histogram", "edges": [float(x) for x in edges], "counts": [int(c) for c in counts],
                "integer": pa.types.is_integer(kind), "missing": missing, "count": len(values)}
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind) or pa.types.is_dictionary(kind):
        counted = pc.value_counts(present).to_pylist()
        counted.sort(key=lambda item: (-item["counts"], str(item["values"])))
        rest = sum(item["counts"] for item in counted[top:])
        labels = [str(item["values"]) for item in counted[:top]] + (["(other)"] if rest else [])
        counts = [item["counts"] for item in counted[:top]] + ([rest] if rest else [])
        return {"kind": "categories", "labels": labels, "counts": counts, "missing": missing, "count": len(present)}
    return {"kind": "none", "type": str(kind), "missing": missing, "count": len(present)}


def persona_files(run_dir: str) -> dict:
    """population (or "" for the single personas.parquet) -> path."""
    out = {}
    single = os.path.join(run_dir, "personas.parquet")
    if os.path.exists(single):
        out[""] = single
    folder = os.path.join(run_dir, "personas")
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".parquet"):
                out[name[:-8]] = os.path.join(folder, name)
    return out


def _rows(table: pa.Table) -> list[dict]:
    return [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def read_agent(path: str, agent: int) -> dict | None:
    """One agent's row; row-group statistics on `agent` skip every other shard's rows."""
    table = pq.read_table(path, filters=[("agent", "=", agent)])
    rows = _rows(table)
    return rows[0] if rows else None


def find_agent(state: MonitorState, agent: int, population: str = "", last: int = 5) -> dict:
    """Persona row and the latest `last` answers (prompt hash, reply, value, error) of one agent."""
    persona, problems = None, []
    path = persona_files(state.run_dir).get(population) or next(iter(persona_files(state.run_dir).values()), None)
    if path:
        try:
            persona = read_agent(path, agent)
        except UNREADABLE as e:
            problems.append(unreadable(path, e, state.run_dir))
    answers = []
    for step, iteration, ask_path in reversed(state.ask_files()):
        if len(answers) >= last:
            break
        if not ask_path or not os.path.exists(ask_path):
            continue
        try:
            row = read_agent(ask_path, agent)
        except UNREADABLE as e:
            problems.append(unreadable(ask_path, e, state.run_dir))
            continue
        if row is not None:
            row.pop("agent", None)
            answers.append(dict(row, step=step, iteration=iteration))
    prompts = {}
    for answer in answers:
        if answer["step"] not in prompts:
            step = state._find(answer["step"])
            prompts[answer["step"]] = prompt_text(step) if step else ""
    try:
        checkpointed = checkpointed_agent(state.run_dir, agent, population)
    except UNREADABLE as e:
        checkpointed = None
        problems.append(str(e) if "cannot be read" in str(e) else f"checkpoint cannot be read: {e}")
    return {"agent": agent, "persona": persona, "answers": answers, "prompts": prompts, "problems": problems,
            "state": checkpointed["state"] if checkpointed else None,
            "memory": checkpointed["memory"] if checkpointed else None,
            "checkpoint": checkpointed["checkpoint"] if checkpointed else None}


def checkpointed_agent(run_dir: str, agent: int, population: str = "") -> dict | None:
    """An agent's state, latest answers and memory as of the newest complete checkpoint (the run
    directory holds no other per-agent state): read from the one shard file that holds the agent."""
    import pyarrow.ipc as ipc

    from populace.runtime.store.checkpoints import latest_checkpoint

    directory = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if directory is None:
        return None
    damaged = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".arrow") or (population and not name.startswith(population + "-")):
            continue
        try:
            with pa.memory_map(os.path.join(directory, name)) as source:
                table = ipc.open_file(source).read_all()
        except UNREADABLE as e:
            damaged.append(unreadable(os.path.join(directory, name), e, run_dir))
            continue
        ids = table.column("agent")
        if not len(ids) or not ids[0].as_py() <= agent <= ids[-1].as_py():
            continue
        row = {k: v[0] for k, v in table.slice(agent - ids[0].as_py(), 1).to_pydict().items()}
        values = {k[2:]: _plain(v) for k, v in row.items() if k.startswith("v:")}
        slots = len([k for k in row if k.startswith("m:")]) // 2
        count = row.get("count", 0) or 0
        memory = []
        for j in range(max(0, count - slots), count):
            slot = (j % slots) * 2
            memory.append({"role": "user", "text": row[f"m:{slot}"]})
            if row.get(f"m:{slot + 1}") is not None:
                memory.append({"role": "assistant", "text": row[f"m:{slot + 1}"]})
        return {"checkpoint": os.path.basename(directory), "state": values, "memory": memory}
    if damaged:  # the agent may be in a shard file that cannot be read: say so rather than "no state"
        raise ValueError("; ".join(damaged))
    return None


def prompt_text(step: dict) -> str:
    """An ask's prompt template as the scenario wrote it, with `{{...}}` for what a run fills in."""
    parts = []
    for piece in step.get("prompt", {}).get("template", []):
        if isinstance(piece, str):
            parts.append(piece)
        elif "var" in piece:
            parts.append("{{" + piece["var"] + "}}")
        elif "env" in piece:
            parts.append("{{" + f"{piece['env']}.{piece['field']}" + "}}")
        elif "col" in piece or "persona" in piece:
            parts.append("{{" + str(piece.get("col") or piece.get("persona")) + "}}")
        else:
            parts.append("{{…}}")
    return "".join(parts).strip()


_FILTER = re.compile(r"^\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>==|=|!=|>=|<=|>|<|~)\s*(?P<value>.+?)\s*$")


class FilterError(ValueError):
    pass


def persona_filter(text: str, schema: pa.Schema):
    """`major = economics`, `age >= 21`, `background ~ physics` (contains) -> a dataset expression."""
    match = _FILTER.match(text)
    if not match:
        raise FilterError("write a filter as FIELD OP VALUE, e.g. `age >= 21`, `major = economics`, `background ~ physics`")
    name, op, raw = match["field"], match["op"], match["value"].strip("\"'")
    if name not in schema.names:
        raise FilterError(f"no persona field `{name}` (fields: {', '.join(schema.names)})")
    kind = schema.field(name).type
    column = ds.field(name)
    if op == "~":
        return pc.match_substring(column.cast(pa.string()), raw, ignore_case=True)
    try:
        if pa.types.is_integer(kind):
            value = int(raw)
        elif pa.types.is_floating(kind):
            value = float(raw)
        elif pa.types.is_boolean(kind):
            value = raw.lower() in ("true", "1", "yes")
        else:
            value = raw
    except ValueError:
        raise FilterError(f"`{raw}` is not a value of field `{name}` ({kind})") from None
    return {"=": column == value, "==": column == value, "!=": column != value, ">=": column >= value,
            "<=": column <= value, ">": column > value, "<": column < value}[op]


class PersonaPages:
    """Pages of PAGE_ROWS personas; reads the one row group a page falls in (a few recent ones cached)."""

    def __init__(self, path: str):
        self.path = path
        self.file = pq.ParquetFile(path)
        self.total = self.file.metadata.num_rows
        self.starts = []
        start = 0
        for i in range(self.file.metadata.num_row_groups):
            self.starts.append(start)
            start += self.file.metadata.row_group(i).num_rows
        self._groups: OrderedDict = OrderedDict()

    @property
    def columns(self) -> list[str]:
        return self.file.schema_arrow.names

    def _group(self, i: int) -> pa.Table:
        if i not in self._groups:
            self._groups[i] = self.file.read_row_group(i)
            while len(self._groups) > 2:
                self._groups.popitem(last=False)
        self._groups.move_to_end(i)
        return self._groups[i]

    def page(self, number: int, filter_text: str = "") -> dict:
        """Rows of page `number` (0-based) and the number of matching rows."""
        if filter_text.strip():
            return self._filtered(number, persona_filter(filter_text, self.file.schema_arrow))
        pages = max(1, math.ceil(self.total / PAGE_ROWS))
        number = min(max(0, number), pages - 1)
        first, last = number * PAGE_ROWS, min(self.total, (number + 1) * PAGE_ROWS)
        parts = []
        for i, start in enumerate(self.starts):
            size = self.file.metadata.row_group(i).num_rows
            if start + size <= first or start >= last:
                continue
            group = self._group(i)
            parts.append(group.slice(max(0, first - start), min(size, last - start) - max(0, first - start)))
        rows = _rows(pa.concat_tables(parts)) if parts else []
        return {"rows": rows, "total": self.total, "page": number, "pages": pages}

    def _filtered(self, number: int, expression) -> dict:
        dataset = ds.dataset(self.path)
        total = dataset.count_rows(filter=expression)
        pages = max(1, math.ceil(total / PAGE_ROWS))
        number = min(max(0, number), pages - 1)
        skip, rows = number * PAGE_ROWS, []
        for batch in dataset.to_batches(filter=expression):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            rows.extend(_rows(pa.Table.from_batches([batch.slice(skip, PAGE_ROWS - len(rows))])))
            skip = 0
            if len(rows) >= PAGE_ROWS:
                break
        return {"rows": rows, "total": total, "page": number, "pages": pages}
