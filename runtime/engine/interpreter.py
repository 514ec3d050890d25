"""The interpreter: runs the plan's typed workflow centrally, step by step, on an executor's shards.

In: a typed Plan, an executor (local or ray), a RunDir and an event listener. Out: the run
directory filled in, events emitted, and a summary dict. Control flow (loops, conditions, `let`,
records, environment updates) runs here; agent steps go to every shard at once (agent_steps.py);
values the driver needs come from values.py. Steps are dispatched by their type.

The run's totals are not kept here: every event goes through the run state fold (store/fold.py),
and the summary, checkpoints and the live displays read that one fold.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from functools import partial
from typing import Callable

from populace.compiler.plan import Plan, plan_bytes
from populace.compiler.plan import steps as s
from populace.compiler.plan.evaluate import EvalError
from populace.runtime.environments import builtin as environments
from populace.runtime.environments.python_kinds import Extensions, scenario_folder
from populace.runtime.models.base import ModelError
from populace.runtime.store import checkpoints, records
from populace.runtime.store.events import read_events
from populace.runtime.store.fold import RunState
from populace.runtime.store.rundir import RUN_FORMAT, RunDir, populace_version

from . import agent_steps, failures
from .errors import BreakLoop, BudgetStop, RunFailed, StopRun
from .values import Values


class Driver:
    def __init__(self, plan: Plan, executor, run_dir: RunDir, listener: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, checkpoint_every: int | None = None,
                 folder: str | None = None, max_failed: float | None = None, budget: float | None = None):
        self.plan = plan
        self.budget = budget  # dollars the run may spend in all (None: no limit)
        self.executor = executor
        self.run_dir = run_dir
        self.listener = listener
        self.should_stop = should_stop or (lambda: False)
        self.started = time.monotonic()
        self.folder = scenario_folder(plan, folder)
        self.extensions = Extensions(plan, self.folder)
        self.env = {name: {**(self.extensions.start(name) if e.kind == "python" else environments.initial_values(plan, e)),
                           **{f: v.init for f, v in e.fields.items()}}
                    for name, e in plan.environments.items()}
        self.values = Values(self)
        self.state = RunState()  # the fold of this run's events: its totals
        self.max_failed = failures.max_failed(plan, max_failed)
        self._max_failed_given = max_failed
        self.failures: list = []  # per ask with failed answers: counts and first errors (failures.json)
        self.frames: list = []
        self.resume: list | None = None
        self.seq = 0
        self.shard_steps = 0
        self.elapsed_before = 0.0
        every = plan.settings.get("checkpoint_every", 1) if checkpoint_every is None else checkpoint_every
        self.checkpoint_every = int(every)
        self._every_given = checkpoint_every is not None
        self._emitting = threading.Lock()  # calls-in-flight samples come from a ticker thread (local executor)
        self.dispatch = {
            s.Repeat: self.repeat, s.For: self.for_each, s.If: self.branch, s.Stop: self.stop, s.Let: self.let,
            s.SetVar: self.set_var, s.SetEnv: self.set_env, s.Record: self.record,
            # agent steps are functions of agent_steps.py, given this driver
            s.Ask: partial(agent_steps.ask, self), s.SetState: partial(agent_steps.set_state, self),
            s.Tell: partial(agent_steps.tell, self), s.Broadcast: partial(agent_steps.broadcast, self),
            s.Call: partial(agent_steps.call, self), s.Regroup: self.regroup, s.Snapshot: partial(agent_steps.snapshot, self),
        }
        self.regroups: dict = {}  # group set -> times drawn anew by `regroup` (shards derive the groups from it)

    # ---------------------------------------------------------------- events
    def emit(self, event: dict) -> None:
        with self._emitting:
            # run time, counted on from the checkpoint in a resumed run (one time axis for the page)
            event = {"t": round(time.monotonic() - self.started + self.elapsed_before, 4), **event}
            self.run_dir.event(event)
            self.state.apply(event)
            if self.listener:
                self.listener(event)

    def shards_event(self, populations) -> None:
        """Where each shard runs (Ray node, host) and what it holds (agents, bytes, process RSS):
        one small call per shard, at start and after each agent step (a restarted shard may move)."""
        for pop in populations:
            self.emit({"type": "shards", "population": pop, "shards": self.executor.call(pop, "info")})

    # ---------------------------------------------------------------- the run
    def run(self, resume: dict | None = None) -> dict:
        """Run the workflow; with `resume` (a checkpoint's driver state) continue from it."""
        plan = self.plan
        started = {"type": "run_started", "format": RUN_FORMAT, "populace_version": populace_version(),
                   "scenario": plan.scenario.name, "plan_hash": plan.plan_hash,
                   "executor": self.executor.name, "seed": plan.seed,
                   **({"workers": self.executor.workers} if getattr(self.executor, "workers", 0) else {}),
                   "shards": {p: len(r) for p, r in self.executor.ranges.items()},
                   "agents": {p: pop.size for p, pop in plan.populations.items()},
                   "prices": {name: {"provider": m.provider, "price": m.price} for name, m in plan.models.items()},
                   **({"budget": self.budget} if self.budget is not None else {}),
                   "scenario_dir": self.folder,  # where a resume finds the scenario's Python files
                   "keep_checkpoints": self.run_dir.keep_checkpoints,  # and how many checkpoints it keeps
                   "pid": os.getpid(), "host": socket.gethostname()}  # the monitor tells a dead driver
        if resume is None:
            self.run_dir.write_bytes("plan.json", plan_bytes(plan) + b"\n")
            self.emit(started)
        else:
            self.restore(resume)
            self.emit(dict(started, resumed_from=resume["seq"]))
        status, failure, unwritable = "finished", None, None
        try:
            self.shards_event(sorted(plan.populations))
            if resume is None:
                agent_steps.personas(self)
            self.block(plan.workflow, self.resume[0]["variables"] if self.resume else {}, "")
        except StopRun:
            status = "finished"
        except KeyboardInterrupt:
            status = "stopped"
        except BudgetStop as e:
            status = "stopped"
            self.budget_stop(e)
        except (RunFailed, EvalError, ModelError) as e:
            failure = str(e)
            self.emit({"type": "run_failed", "error": failure, **({"errors": e.errors} if getattr(e, "errors", None) else {})})
            status = "failed"
        except Exception as e:  # a shard raised (RayTaskError wraps it): record it, fail loudly
            if isinstance(getattr(e, "cause", None), BudgetStop):  # (an ordered ask's shard, through Ray)
                status = "stopped"
                self.budget_stop(e.cause)
                return self.finish(status, None, None)
            agent_steps.restart_events(self, None, "")  # restarts made before it gave up are events too
            cause = getattr(e, "cause", None) or e  # RayTaskError keeps the shard's own exception
            failure = f"{type(cause).__name__}: {cause}"
            status = "failed"
            # A file that cannot be written (a full disk): record what still fits, then raise it for
            # the CLI's one line; the run stays resumable from its last checkpoint.
            unwritable = cause if isinstance(cause, OSError) else None
            try:
                self.emit({"type": "run_failed", "error": failure})
            except OSError:
                if unwritable is None:
                    raise
        return self.finish(status, failure, unwritable)

    def finish(self, status: str, failure: str | None, unwritable) -> dict:
        """summary.json, the tables and run_finished; a file that cannot be written is raised last."""
        seconds = time.monotonic() - self.started + self.elapsed_before
        summary = self.summary(status, seconds)
        if failure:
            summary["error"] = failure
        try:
            summary["tables"] = records.write_tables(self.run_dir.path, self.plan)
            self.run_dir.write_json("summary.json", summary)
            self.emit({"type": "run_finished", "status": status, "seconds": round(seconds, 3)})
        except OSError:
            if unwritable is None:
                raise
        if unwritable is not None:
            raise unwritable
        return summary

    def summary(self, status: str, seconds: float) -> dict:
        """summary.json: the fold's totals, with the run's identity."""
        st = self.state
        return {
            "status": status, "scenario": self.plan.scenario.name, "plan_hash": self.plan.plan_hash,
            "seed": self.plan.seed, "params": self.plan.params, "executor": self.executor.name,
            **({"workers": self.executor.workers} if getattr(self.executor, "workers", 0) else {}),
            "shards": {p: len(r) for p, r in self.executor.ranges.items()},
            "agents": sum(p.size for p in self.plan.populations.values()),
            "seconds": round(seconds, 3), "steps": st.steps_done, "agent_steps": st.agents_done,
            "calls": st.calls, "tokens_in": st.tokens_in, "tokens_out": st.tokens_out,
            "errors": st.errors, "answers": st.answers, "max_failed": self.max_failed, "models": st.by_model,
            "cost_usd": None if st.cost_usd is None else round(st.cost_usd, 6), "run_dir": self.run_dir.path,
            **({"budget_usd": self.budget} if self.budget is not None else {}),
            **({"stopped_by": st.stopped_by} if st.stopped_by else {}),
        }

    def budget_stop(self, stop: BudgetStop) -> None:
        """The budget cannot cover another call: say where the run stopped and what was spent."""
        spent = self.executor.budget_spent()
        self.emit({"type": "budget_reached", "budget_usd": self.budget, "spent_usd": round(spent, 6),
                   "step": stop.step_id, "iteration": stop.label, "checkpoint": self.seq})

    # ---------------------------------------------------------------- position, checkpoints, resume
    # `frames[d]` says where the run is at loop depth d: the step index in that block, its
    # variables and iteration label, and (for a loop or branch being executed) the iteration or
    # branch. A checkpoint saves the frames with the shards' state, taken just before a step that
    # changes agents; resuming re-enters the same loops at the same iterations and runs that step again.

    def block(self, steps, variables: dict, label: str, depth: int = 0) -> None:
        start = self.resume[depth]["index"] if self.resume and depth < len(self.resume) else 0
        for index in range(start, len(steps)):
            step = steps[index]
            del self.frames[depth:]
            self.frames.append({"index": index, "variables": variables, "label": label})
            if self.resume and depth == len(self.resume) - 1:
                self.resume = None  # the checkpointed step: from here on, a normal run
            self.controls(step, label)
            if isinstance(step, s.AGENT_STEPS) and self.resume is None:
                self.maybe_checkpoint()
            self.dispatch[type(step)](step, variables, label, depth)

    def inside(self, depth: int) -> dict | None:
        """While resuming: the saved frame of the loop or branch at `depth`, if the run was inside it."""
        if self.resume and depth + 1 < len(self.resume):
            return self.resume[depth]
        return None

    def maybe_checkpoint(self) -> None:
        every = self.checkpoint_every
        if not every:
            return
        self.shard_steps += 1
        if (self.shard_steps - 1) % every:
            return
        self.checkpoint()

    def checkpoint(self) -> None:
        """Shards save their state, then driver.json (written last) makes the checkpoint complete."""
        self.seq += 1
        # Absolute: Ray workers need not share the driver's working directory.
        directory = os.path.abspath(self.run_dir.file("checkpoints", f"{self.seq:06d}"))
        for pop in sorted(self.plan.populations):
            self.executor.call(pop, "save_checkpoint", directory)
        checkpoints.write_driver_state(self.run_dir, self.seq, {
            "plan_hash": self.plan.plan_hash, "frames": _plain_frames(self.frames), "env": self.env,
            "fold": self.state.saved(), "metrics_lines": self.run_dir.metrics_written, "ranges": self.executor.ranges,
            "shard_steps": self.shard_steps, "elapsed": time.monotonic() - self.started + self.elapsed_before,
            "checkpoint_every": self.checkpoint_every, "failures": self.failures, "max_failed": self.max_failed,
            "regroups": self.regroups,
        })
        self.executor.checkpoint_done()
        self.emit({"type": "checkpoint", "seq": self.seq, "before": self.frames[-1]["index"],
                   "iteration": self.frames[-1]["label"]})
        self.run_dir.prune_checkpoints()

    def restore(self, state: dict) -> None:
        self.seq = state["seq"]
        self.resume = state["frames"]
        self.env = state["env"]
        self.state = self._events_fold(state["seq"]) or RunState.restored(checkpoints.fold_of(state))
        self.shard_steps = state["shard_steps"]
        saved_groups = state.get("regroups")
        self.regroups = dict(saved_groups) if isinstance(saved_groups, dict) else {}
        saved_failures = state.get("failures")
        self.failures = list(saved_failures) if isinstance(saved_failures, list) else []
        if self._max_failed_given is None and isinstance(state.get("max_failed"), (int, float)):
            self.max_failed = float(state["max_failed"])  # `run --max-failed` holds for the resume too
        self.elapsed_before = state.get("elapsed", 0.0)
        saved_every = state.get("checkpoint_every")
        if not self._every_given and isinstance(saved_every, int) and not isinstance(saved_every, bool) and saved_every >= 0:
            self.checkpoint_every = saved_every  # `run --checkpoint-every N` holds for the resume too
        self.run_dir.truncate_metrics(state["metrics_lines"])
        self.run_dir.clear_control()

    def _events_fold(self, seq: int) -> RunState | None:
        """The fold of the run's events so far, when it holds checkpoint `seq`: the run_started
        this resume emits then rolls it back to that checkpoint the way every other reader of the
        events does (keeping the paid calls of the steps that will be redone). None: use driver.json."""
        try:
            state = RunState.from_events(read_events(self.run_dir.file("events.jsonl")))
        except (OSError, ValueError):
            return None
        return state if seq in state.snapshots else None

    def controls(self, step: s.Step, label: str) -> None:
        """Between steps: obey `control.json` in the run directory (pause, resume, stop).

        Anything that can write a file controls a run the same way (the monitor page, a script,
        another machine sharing the directory); the driver answers with run_paused, run_resumed
        and stop_requested events.
        """
        if self.should_stop():
            raise KeyboardInterrupt
        control = self.run_dir.read_control()
        if control == "stop":
            self.emit({"type": "stop_requested", "before": step.id, "iteration": label})
            raise KeyboardInterrupt
        if control == "pause":
            self.emit({"type": "run_paused", "before": step.id, "iteration": label})
            while control == "pause":
                time.sleep(0.2)
                control = self.run_dir.read_control()
            if control == "stop":
                self.emit({"type": "stop_requested", "before": step.id, "iteration": label})
                raise KeyboardInterrupt
            self.emit({"type": "run_resumed", "before": step.id, "iteration": label})

    # ---------------------------------------------------------------- control flow
    @staticmethod
    def _label(label: str, var: str, value) -> str:
        inner = label[1:-1] + ", " if label else ""
        return f"[{inner}{var}={value}]"

    def _iterate(self, step, variables, label, depth, count: int, item_of, label_of) -> None:
        saved = self.inside(depth)
        first = saved["iteration"] if saved else 1
        for i in range(first, count + 1):
            inner = dict(variables, **({step.var: item_of(i)} if step.var else {}))
            if saved:  # the iteration we resume in: its variables as they were
                inner, saved = dict(self.resume[depth + 1]["variables"]), None
            self.frames[depth]["iteration"] = i
            try:
                self.block(step.body, inner, self._label(label, step.var or "i", label_of(i)), depth + 1)
            except BreakLoop:
                break
            finally:
                # Assignments to variables declared outside the loop outlive the iteration.
                variables.update({k: v for k, v in inner.items() if k in variables and k != step.var})

    def repeat(self, step: s.Repeat, variables, label, depth):
        count = int(self.values.value(step.count, variables, step))
        self._iterate(step, variables, label, depth, count, lambda i: i, lambda i: i)

    def for_each(self, step: s.For, variables, label, depth):
        items = self.values.value(step.iterable, variables, step)

        def shown(i):
            item = items[i - 1]
            return item if isinstance(item, (int, float, str)) else i

        self._iterate(step, variables, label, depth, len(items), lambda i: items[i - 1], shown)

    def branch(self, step: s.If, variables, label, depth):
        saved = self.inside(depth)
        if saved:
            chosen = saved["branch"]
        else:
            chosen = next((i for i, b in enumerate(step.branches) if self.values.value(b.cond, variables, step)), -1)
        self.frames[depth]["branch"] = chosen
        body = step.branches[chosen].body if chosen >= 0 else step.orelse
        self.block(body, variables, label, depth + 1)

    def stop(self, step: s.Stop, variables, label, depth=0):
        if self.values.value(step.cond, variables, step):
            self.emit({"type": "stopped_when", "step": step.id, "iteration": label, "scope": step.scope})
            raise StopRun if step.scope == "run" else BreakLoop

    def let(self, step: s.Let, variables, label, depth=0):
        variables[step.name] = self.values.value(step.value, variables, step)

    def set_var(self, step: s.SetVar, variables, label, depth=0):
        variables[step.name] = _update(variables[step.name], step.operator, self.values.value(step.value, variables, step))

    def set_env(self, step: s.SetEnv, variables, label, depth=0):
        env = self.env[step.env]
        env[step.field] = _update(env[step.field], step.operator, self.values.value(step.value, variables, step))

    def record(self, step: s.Record, variables, label, depth=0):
        base = {k: v for k, v in variables.items() if isinstance(v, (int, float, str, bool))}
        if step.table:
            base["table"] = step.table
        if step.by:
            rows = self.values.keyed_rows(step, variables)  # one row per value of the keys
        else:
            rows = [{item.name: self.values.value(item.value, variables, step) for item in step.items}]
        for values in rows:
            row = dict(base, **values)
            self.run_dir.metric(dict(row, step=step.id))
            self.emit({"type": "record", "step": step.id, "iteration": label, "values": row})

    def regroup(self, step: s.Regroup, variables, label, depth=0):
        """Draw the group set anew: shards derive the new groups from the seed and this count."""
        self.regroups[step.group] = self.regroups.get(step.group, 0) + 1
        self.emit({"type": "regrouped", "step": step.id, "iteration": label, "group": step.group,
                   "draw": self.regroups[step.group]})


def _update(old, op, new):
    if op == "=":
        return new
    if op == "+=":
        if isinstance(old, list):
            return old + (new if isinstance(new, list) else [new])
        return old + new
    try:
        return {"-=": lambda: old - new, "*=": lambda: old * new, "/=": lambda: old / new}[op]()
    except ZeroDivisionError:
        raise EvalError("division by zero") from None


def _plain_frames(frames: list) -> list:
    """Frames as JSON: variables copied (they are plain values: numbers, text, lists, records)."""
    return [{k: (dict(v) if k == "variables" else v) for k, v in f.items()} for f in frames]
