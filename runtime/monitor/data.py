"""What the monitor shows of a run's progress, folded from its events: no NiceGUI here.

In: the path of a run directory, in progress (another process is still writing it) or finished.
Out: `MonitorState.poll()` tails events.jsonl (only the bytes added since the last poll) and folds
them with `RunState` plus what only the page needs (per-step status, throughput over time, shard
progress, retries, errors with their scenario lines, the ETA). The panels over this state are in
panels.py (mixed in), the plan's rows and scenario lines in plan.py, the Parquet reads in files.py.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from populace.runtime.store.events import EventTail, RunState

from .panels import Panels
from .plan import _WHERE, Sources, _iteration_number, _label_parts, plan_steps, where

AGENT_STEP_OPS = ("ask", "set_state", "tell", "broadcast")  # ops that emit step_started/step_finished
ENDED = ("finished", "stopped", "failed")
MAX_POINTS = 600  # throughput points kept for the chart
MAX_ERRORS = 200


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



@dataclass
class StepInfo:
    runs: int = 0  # executions finished (events of this step)
    iteration: str = ""
    seconds: float = 0.0
    started: float | None = None  # run time (s) when the running execution began


@dataclass
class MonitorState(Panels):
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

