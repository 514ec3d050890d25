"""The driver: runs the plan's workflow centrally, step by step, on an executor's shards.

In: a Plan, an executor (local or ray), a RunDir and an event listener. Out: the run directory
filled in, events emitted, and a summary dict. Loops, conditions, `let`, records and environment
updates are evaluated here; asks, agent updates and messages go to every shard at once, and
aggregates come back as shard partials (map-reduce), never as rows.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
from typing import Callable

from populace.compiler.plan import Plan, canonical_bytes
from populace.compiler.plan.evaluate import EvalError, evaluate

from populace.compiler.plan.extensions import Each, ExtensionError

from populace.runtime.environments import builtin as environments
from populace.runtime.environments import groups
from populace.runtime.models import latency
from populace.runtime.environments.python_kinds import Extensions, scenario_folder
from populace.runtime.models.base import OFFLINE_PROVIDERS, ModelError, PythonModel
from populace.runtime.store.rundir import RUN_FORMAT, RunDir, iteration_file, populace_version
from .shard import combine
from populace.runtime.columns.vector import agg_key

SHARD_OPS = ("ask", "set_state", "tell", "broadcast")  # steps that change agents: checkpoints come before them


class StopRun(Exception):
    pass


class BreakLoop(Exception):
    pass


class RunFailed(Exception):
    """The run cannot go on; carries the step and its scenario span for the message."""

    def __init__(self, message: str, step: dict | None = None):
        span = (step or {}).get("span")
        where = f"{span['file']}:{span['line']}:{span['column']}: " if span else ""
        super().__init__(where + message)
        self.message = message
        self.step = step

    def __reduce__(self):
        return (RunFailed, (self.message, self.step))


def used_models(plan: Plan) -> set[str]:
    used = {a.model for a in plan.agents.values() if a.model}
    used |= {s["model"] for s in plan.steps() if s.get("op") == "ask" and s.get("model")}
    for p in plan.personas.values():
        used |= {f["model"] for f in p.fields if f["kind"] == "write"}
    return used


def unsupported(plan: Plan, replay: bool = False, folder: str | None = None) -> list[str]:
    """What stops this run before it starts: parts this runtime lacks, API keys not set."""
    problems = []
    for name in sorted(used_models(plan)):
        model = plan.models[name]
        key_env = model.settings.get("api_key_env")
        if model.provider not in OFFLINE_PROVIDERS and not replay and key_env and not os.environ.get(key_env):
            problems.append(f"model `{name}` ({model.provider}) needs its API key in the environment variable "
                            f"{key_env}, which is not set")
        if model.provider == "python":  # its function must import here (shards import it the same way)
            try:
                PythonModel(name, model.settings, model.limits, scenario_folder(plan, folder))
            except ModelError as e:
                problems.append(f"{e} (a module next to the scenario, or an installed one)")
    problems.extend(environments.check_plan(plan))
    try:  # a Python kind's module must import, match the plan and start, before anything is spent
        extensions = Extensions(plan, folder)
        for name in extensions.instances:
            extensions.start(name)
    except ExtensionError as e:
        problems.append(str(e))
    return problems


class Driver:
    def __init__(self, plan: Plan, executor, run_dir: RunDir, listener: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, checkpoint_every: int | None = None,
                 folder: str | None = None):
        self.plan = plan
        self.executor = executor
        self.run_dir = run_dir
        self.listener = listener
        self.should_stop = should_stop or (lambda: False)
        self.started = time.monotonic()
        self.folder = scenario_folder(plan, folder)
        self.extensions = Extensions(plan, self.folder)
        self.env = {name: {**(self.extensions.start(name) if e.kind == "python" else environments.initial_values(plan, e)),
                           **{f: v["init"] for f, v in e.fields.items()}}
                    for name, e in plan.environments.items()}
        self.totals = {"calls": 0, "tokens_in": 0, "tokens_out": 0, "errors": 0, "agents": 0, "steps": 0}
        self.by_model: dict = {}
        self.latencies: dict = {}  # model -> latency histogram (latency.py)
        self.frames: list = []
        self.resume: list | None = None
        self.seq = 0
        self.shard_steps = 0
        self.elapsed_before = 0.0
        every = plan.settings.get("checkpoint_every", 1) if checkpoint_every is None else checkpoint_every
        self.checkpoint_every = int(every)
        self._every_given = checkpoint_every is not None
        self._emitting = threading.Lock()  # calls-in-flight samples come from a ticker thread (local executor)

    # ---------------------------------------------------------------- events
    def emit(self, event: dict) -> None:
        with self._emitting:
            # run time, counted on from the checkpoint in a resumed run (one time axis for the page)
            event = {"t": round(time.monotonic() - self.started + self.elapsed_before, 4), **event}
            self.run_dir.event(event)
            if self.listener:
                self.listener(event)

    def _shards_event(self, populations) -> None:
        """Where each shard runs (Ray node, host) and what it holds (agents, bytes, process RSS):
        one small call per shard, at start and after each agent step (a restarted shard may move)."""
        for pop in populations:
            self.emit({"type": "shards", "population": pop, "shards": self.executor.call(pop, "info")})

    def _models_event(self) -> None:
        """Each model's figures for the run so far (calls, retries, failures, tokens, latency, cost)."""
        models = {}
        for name, m in sorted(self.by_model.items()):
            figures = dict(m, cost_usd=self._cost(name, m))
            figures.update(latency.quantiles(self.latencies.get(name, {})))
            models[name] = figures
        self.emit({"type": "models", "models": models})

    def _cost(self, name: str, m: dict) -> float | None:
        """Dollars spent on model `name` so far from the plan's prices; None when it has no price."""
        model = self.plan.models[name]
        if model.provider in OFFLINE_PROVIDERS:
            return 0.0
        price = model.price
        if not price:
            return None
        # Anthropic reports cache reads and writes apart from the other input tokens.
        return (m["tokens_in"] * price.get("input", 0) + m["tokens_out"] * price.get("output", 0)
                + m.get("cache_read", 0) * price.get("cache_read", price.get("input", 0))
                + m.get("cache_write", 0) * price.get("cache_write", price.get("input", 0))) / 1e6

    def _calls_llm(self, step: dict, population: str) -> bool:
        """Does this ask go to a remote model (one whose calls in flight are worth sampling)?"""
        names = {step["model"]} if step.get("model") else {
            self.plan.agents[part["agent"]].model for part in self.plan.populations[population].mixture}
        return any(name and self.plan.models[name].provider not in OFFLINE_PROVIDERS for name in names)

    # ---------------------------------------------------------------- the run
    def run(self, resume: dict | None = None) -> dict:
        """Run the workflow; with `resume` (a checkpoint's driver state) continue from it."""
        plan = self.plan
        started = {"type": "run_started", "format": RUN_FORMAT, "populace_version": populace_version(),
                   "scenario": plan.scenario["name"], "plan_hash": plan.plan_hash,
                   "executor": self.executor.name, "seed": plan.seed,
                   "shards": {p: len(r) for p, r in self.executor.ranges.items()},
                   "agents": {p: pop.size for p, pop in plan.populations.items()},
                   "scenario_dir": self.folder,  # where a resume finds the scenario's Python files
                   "pid": os.getpid(), "host": socket.gethostname()}  # the monitor tells a dead driver
        if resume is None:
            self.run_dir.write_bytes("plan.json", canonical_bytes(plan.raw) + b"\n")
            self.emit(started)
        else:
            self.restore(resume)
            self.emit(dict(started, type="run_started", resumed_from=resume["seq"]))
        status, failure, unwritable = "finished", None, None
        try:
            self._shards_event(sorted(plan.populations))
            if resume is None:
                self._personas()
            elif self.by_model:
                self._models_event()
            self.block(plan.workflow, self.resume[0]["variables"] if self.resume else {}, "")
        except StopRun:
            status = "finished"
        except KeyboardInterrupt:
            status = "stopped"
        except (RunFailed, EvalError, ModelError) as e:
            failure = str(e)
            self.emit({"type": "run_failed", "error": failure})
            status = "failed"
        except Exception as e:  # a shard raised (RayTaskError wraps it): record it, fail loudly
            for restart in self.executor.restarts:  # restarts made before it gave up are events too
                self.emit(dict(restart, type="shard_restarted"))
            self.executor.restarts.clear()
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
        seconds = time.monotonic() - self.started + self.elapsed_before
        summary = self.summary(status, seconds)
        if failure:
            summary["error"] = failure
        try:
            self.run_dir.write_json("summary.json", summary)
            self.emit({"type": "run_finished", "status": status, "seconds": round(seconds, 3)})
        except OSError:
            if unwritable is None:
                raise
        if unwritable is not None:
            raise unwritable
        return summary

    def _personas(self) -> None:
        # Texts agreed before the shards started (executors.agreed_persona_texts), then the shards' own.
        usages = [getattr(self.executor, "write_usage", {})]
        for pop in sorted(self.plan.populations):
            usages.extend(self.executor.call(pop, "take_write_usage"))
        for usage in usages:
            for model, counts in usage.items():
                m = self.by_model.setdefault(model, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
                for key, value in counts.items():
                    m[key] = m.get(key, 0) + value
                self.totals["calls"] += counts["calls"]
                self.totals["tokens_in"] += counts["tokens_in"]
                self.totals["tokens_out"] += counts["tokens_out"]
        if self.by_model:
            self._models_event()
        tables = {}
        for pop in sorted(self.plan.populations):
            if self.plan.populations[pop].persona:
                tables[pop] = self.executor.call(pop, "persona_table")
        if len(tables) == 1:
            self.run_dir.write_tables("personas.parquet", next(iter(tables.values())))
        for pop, parts in tables.items():
            if len(tables) > 1:
                self.run_dir.write_tables(f"personas/{pop}.parquet", parts)

    def summary(self, status: str, seconds: float) -> dict:
        cost, cost_known = 0.0, True
        for name, m in self.by_model.items():
            m_cost = self._cost(name, m)
            if m_cost is None:
                cost_known = False
            else:
                m["cost_usd"] = m_cost
                cost += m_cost
        for name, histogram in self.latencies.items():
            if histogram and name in self.by_model:
                self.by_model[name].update(latency.quantiles(histogram))
        agents = sum(p.size for p in self.plan.populations.values())
        return {
            "status": status, "scenario": self.plan.scenario["name"], "plan_hash": self.plan.plan_hash,
            "seed": self.plan.seed, "params": self.plan.params, "executor": self.executor.name,
            "shards": {p: len(r) for p, r in self.executor.ranges.items()}, "agents": agents,
            "seconds": round(seconds, 3), "steps": self.totals["steps"], "agent_steps": self.totals["agents"],
            "calls": self.totals["calls"], "tokens_in": self.totals["tokens_in"], "tokens_out": self.totals["tokens_out"],
            "errors": self.totals["errors"], "models": self.by_model, "cost_usd": round(cost, 6) if cost_known else None,
            "run_dir": self.run_dir.path,
        }

    # ---------------------------------------------------------------- steps
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
            self._controls(step, label)
            if step["op"] in SHARD_OPS and self.resume is None:
                self.maybe_checkpoint()
            getattr(self, "op_" + step["op"])(step, variables, label, depth)

    def _inside(self, depth: int) -> dict | None:
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

    def _restart_events(self, step, label) -> None:
        while self.executor.restarts:
            restart = self.executor.restarts.pop(0)
            self.emit(dict(restart, type="shard_restarted", step=step["id"], iteration=label))

    def checkpoint(self) -> None:
        """Shards save their state, then driver.json (written last) makes the checkpoint complete."""
        self.seq += 1
        # Absolute: Ray workers need not share the driver's working directory.
        directory = os.path.abspath(self.run_dir.file("checkpoints", f"{self.seq:06d}"))
        for pop in sorted(self.plan.populations):
            self.executor.call(pop, "save_checkpoint", directory)
        state = {
            "format": RUN_FORMAT, "populace_version": populace_version(), "seq": self.seq, "plan_hash": self.plan.plan_hash, "frames": _plain_frames(self.frames),
            "env": self.env, "totals": self.totals, "by_model": self.by_model, "latencies": self.latencies,
            "metrics_lines": self.run_dir.metrics_written, "ranges": self.executor.ranges,
            "shard_steps": self.shard_steps, "elapsed": time.monotonic() - self.started + self.elapsed_before,
            "checkpoint_every": self.checkpoint_every,
        }
        self.run_dir.write_json(f"checkpoints/{self.seq:06d}/driver.json", state)
        self.executor.checkpoint_done()
        self.emit({"type": "checkpoint", "seq": self.seq, "before": self.frames[-1]["index"],
                   "iteration": self.frames[-1]["label"]})
        self.run_dir.prune_checkpoints(keep=2)

    def restore(self, state: dict) -> None:
        self.seq = state["seq"]
        self.resume = state["frames"]
        self.env = state["env"]
        self.totals = state["totals"]
        self.by_model = state["by_model"]
        self.latencies = {name: latency.from_any(saved) for name, saved in state.get("latencies", {}).items()}
        self.shard_steps = state["shard_steps"]
        self.elapsed_before = state.get("elapsed", 0.0)
        saved_every = state.get("checkpoint_every")
        if not self._every_given and isinstance(saved_every, int) and not isinstance(saved_every, bool) and saved_every >= 0:
            self.checkpoint_every = saved_every  # `run --checkpoint-every N` holds for the resume too
        self.run_dir.truncate_metrics(state["metrics_lines"])
        self.run_dir.clear_control()

    def _controls(self, step, label) -> None:
        """Between steps: obey `control.json` in the run directory (pause, resume, stop).

        Anything that can write a file controls a run the same way (the monitor page, a script,
        another machine sharing the directory); the driver answers with run_paused, run_resumed
        and stop_requested events.
        """
        if self.should_stop():
            raise KeyboardInterrupt
        control = self.run_dir.read_control()
        if control == "stop":
            self.emit({"type": "stop_requested", "before": step["id"], "iteration": label})
            raise KeyboardInterrupt
        if control == "pause":
            self.emit({"type": "run_paused", "before": step["id"], "iteration": label})
            while control == "pause":
                time.sleep(0.2)
                control = self.run_dir.read_control()
            if control == "stop":
                self.emit({"type": "stop_requested", "before": step["id"], "iteration": label})
                raise KeyboardInterrupt
            self.emit({"type": "run_resumed", "before": step["id"], "iteration": label})

    def _label(self, label: str, var: str, value) -> str:
        inner = label[1:-1] + ", " if label else ""
        return f"[{inner}{var}={value}]"

    def op_repeat(self, step, variables, label, depth):
        count = self.value(step["count"], variables, step)
        saved = self._inside(depth)
        first = saved["iteration"] if saved else 1
        for i in range(first, int(count) + 1):
            inner = dict(variables)
            if step["var"]:
                inner[step["var"]] = i
            if saved:  # the iteration we resume in: its variables as they were
                inner, saved = dict(self.resume[depth + 1]["variables"]), None
            self.frames[depth]["iteration"] = i
            try:
                self.block(step["body"], inner, self._label(label, step["var"] or "i", i), depth + 1)
            except BreakLoop:
                break
            finally:
                # Assignments to variables declared outside the loop outlive the iteration.
                variables.update({k: v for k, v in inner.items() if k in variables and k != step["var"]})

    def op_for(self, step, variables, label, depth):
        items = self.value(step["iterable"], variables, step)
        saved = self._inside(depth)
        first = saved["iteration"] if saved else 1
        for i in range(first, len(items) + 1):
            item = items[i - 1]
            inner = dict(variables, **{step["var"]: item})
            if saved:
                inner, saved = dict(self.resume[depth + 1]["variables"]), None
            self.frames[depth]["iteration"] = i
            try:
                self.block(step["body"], inner,
                           self._label(label, step["var"], item if isinstance(item, (int, float, str)) else i), depth + 1)
            except BreakLoop:
                break
            finally:
                variables.update({k: v for k, v in inner.items() if k in variables and k != step["var"]})

    def op_if(self, step, variables, label, depth):
        saved = self._inside(depth)
        if saved:
            chosen = saved["branch"]
        else:
            chosen = next((i for i, b in enumerate(step["branches"]) if self.value(b["cond"], variables, step)), -1)
        self.frames[depth]["branch"] = chosen
        body = step["branches"][chosen]["body"] if chosen >= 0 else step["else"]
        self.block(body, variables, label, depth + 1)

    def op_stop(self, step, variables, label, depth=0):
        if self.value(step["cond"], variables, step):
            self.emit({"type": "stopped_when", "step": step["id"], "iteration": label, "scope": step["scope"]})
            raise StopRun if step["scope"] == "run" else BreakLoop

    def op_let(self, step, variables, label, depth=0):
        variables[step["name"]] = self.value(step["value"], variables, step)

    def op_set_var(self, step, variables, label, depth=0):
        variables[step["name"]] = self._update(variables[step["name"]], step["operator"],
                                               self.value(step["value"], variables, step))

    def op_set_env(self, step, variables, label, depth=0):
        env = self.env[step["env"]]
        env[step["field"]] = self._update(env[step["field"]], step["operator"], self.value(step["value"], variables, step))

    def _update(self, old, op, new):
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

    def op_record(self, step, variables, label, depth=0):
        row = {k: v for k, v in variables.items() if isinstance(v, (int, float, str, bool))}
        for item in step["items"]:
            row[item["name"]] = self.value(item["value"], variables, step)
        self.run_dir.metric(dict(row, step=step["id"]))
        self.emit({"type": "record", "step": step["id"], "iteration": label, "values": row})

    def op_ask(self, step, variables, label, depth=0):
        # System prompts may hold aggregates too: they are computed with the step's own.
        systems = [self.plan.agents[part["agent"]].system for part in self.plan.populations[step["population"]].mixture]
        self._shard_step(step, variables, label, "ask", [step["prompt"], step["where"], *systems])

    def op_set_state(self, step, variables, label, depth=0):
        self._shard_step(step, variables, label, "set_state", [step["value"], step["where"]])

    def op_tell(self, step, variables, label, depth=0):
        target = step["target"]
        exprs = [step["message"], step.get("where"), target.get("index")]
        context = None
        if target["kind"] in ("group", "neighbors"):
            # The senders' messages are gathered first; each receiver's shard then picks its
            # group mates' or neighbours' lines (they may live on any shard).
            context = self.context(variables, step, label, exprs)
            parts = self.executor.call(step["sender"], "outgoing", step, context)
            if target["kind"] == "group":
                sent = {"ids": _concat([p["ids"] for p in parts]), "keys": _concat([p["keys"] for p in parts]),
                        "texts": [t for p in parts for t in p["texts"]]}
            else:
                texts = [None] * self.plan.populations[step["sender"]].size
                for p in parts:
                    for i, t in zip(p["ids"].tolist(), p["texts"]):
                        texts[i] = t
                sent = {"texts": texts}
            context = dict(context, aggregates=dict(context["aggregates"], _tell=sent))
        self._shard_step(step, variables, label, "tell", exprs, population=target["population"], context=context)

    def op_broadcast(self, step, variables, label, depth=0):
        message = self.value(step["message"], variables, step)
        self.emit({"type": "step_started", "step": step["id"], "iteration": label, "op": "broadcast"})
        began = time.monotonic()
        total = 0
        for pop in step["populations"]:
            total += sum(self.executor.call(pop, "broadcast", message))
        self.totals["steps"] += 1
        self.emit({"type": "step_finished", "step": step["id"], "iteration": label, "op": "broadcast",
                   "agents": total, "seconds": round(time.monotonic() - began, 4)})

    def op_call(self, step, variables, label, depth=0):
        """Environment methods: a chat room's posts and a grid's moves, gathered in agent id order."""
        env = self.plan.environments[step["env"]]
        pop = step["population"]
        self.emit({"type": "step_started", "step": step["id"], "iteration": label, "op": "call", "population": pop})
        began = time.monotonic()
        context = self.context(variables, step, label, step["args"])
        values = self.env[env.name]
        if env.kind == "chatroom" and step["method"] == "post":
            keep = int(env.params.get("keep", 50))
            new = [t for part in self.executor.call(pop, "texts", step["args"][0], context, keep) for t in part]
            values["posts"] = (list(values.get("posts", [])) + new)[-keep:] if keep else []
            agents = len(new)
        elif env.kind == "python":
            agents = self._act(step, variables, context, values)
        elif env.kind == "grid" and step["method"] == "move":
            moves = [m for part in self.executor.call(pop, "column", step["args"][0], context) for m in part.tolist()]
            cells = environments.move(env, np.asarray(values["_positions"], dtype=np.int64), moves)
            values["_positions"] = cells.tolist()
            values["_moves"] = values.get("_moves", 0) + 1
            agents = len(moves)
        else:
            raise RunFailed(f"`{step['env']}.{step['method']}` is not a statement", step)
        self.totals["steps"] += 1
        self.emit({"type": "step_finished", "step": step["id"], "iteration": label, "op": "call", "population": pop,
                   "agents": agents, "seconds": round(time.monotonic() - began, 4)})

    def _act(self, step, variables, context, values) -> int:
        """A Python kind's action: per-agent arguments gathered in agent id order, the rest evaluated here."""
        spec = self.extensions.specs[step["env"]].methods[step["method"]]
        args, agents = [], 0
        for arg, kind in zip(step["args"], spec.args):
            if isinstance(kind, Each):
                column = [v for part in self.executor.call(step["population"], "column", arg, context) for v in part.tolist()]
                args.append(column)
                agents = len(column)
            else:
                args.append(self.value(arg, variables, step))
        try:
            args = self.extensions.arguments(step["env"], step["method"], args)
            self.env[step["env"]] = self.extensions.act(step["env"], step["method"], values, args)
        except ExtensionError as e:
            raise RunFailed(str(e), step) from None
        except Exception as e:  # the user's method failed: the run stops with their error and our step
            raise RunFailed(f"{step['env']}.{step['method']}(): {type(e).__name__}: {e}", step) from None
        return agents

    # ---------------------------------------------------------------- shards and aggregates
    def _shard_step(self, step, variables, label, method, exprs, population=None, context=None):
        pop = population or step["population"]
        self.emit({"type": "step_started", "step": step["id"], "iteration": label, "op": step["op"],
                   "population": pop, "agents": self.plan.populations[pop].size})
        began = time.monotonic()
        context = context or self.context(variables, step, label, exprs)
        done = {"agents": 0}
        size = self.plan.populations[pop].size

        def shard_done(index, result):
            a, b = self.executor.ranges[pop][index]
            done["agents"] += b - a
            self.emit({"type": "shard_finished", "step": step["id"], "iteration": label, "population": pop,
                       "shard": index, "agents_done": done["agents"], "agents_total": size,
                       "errors": result["errors"] if isinstance(result, dict) else 0})

        on_wait = None
        if method == "ask" and self._calls_llm(step, pop):
            def on_wait(pending):
                in_flight: dict = {}
                for load in self.executor.sample(pop, pending):
                    for model, n in load.items():
                        in_flight[model] = in_flight.get(model, 0) + n
                self.emit({"type": "calls_in_flight", "step": step["id"], "iteration": label, "models": in_flight,
                           "shards": len(pending)})

        results = self.executor.call(pop, method, step, context, on_done=shard_done, on_wait=on_wait)
        self._restart_events(step, label)
        seconds = time.monotonic() - began
        event = {"type": "step_finished", "step": step["id"], "iteration": label, "op": step["op"], "population": pop,
                 "seconds": round(seconds, 4)}
        self.totals["steps"] += 1
        if method == "ask":
            tables = [r.pop("table") for r in results]
            self.run_dir.write_tables(f"asks/{step['id'][5:]}/{iteration_file(label)}.parquet", tables)
            for key in ("agents", "calls", "errors", "tokens_in", "tokens_out"):
                event[key] = sum(r[key] for r in results)
                self.totals[key] += event[key]
            by_model: dict = {}
            for r in results:
                for model, counts in r.get("by_model", {}).items():
                    acc = by_model.setdefault(model, [0, 0, 0])
                    for i in range(3):
                        acc[i] += counts[i]
            for model, (calls, tin, tout) in by_model.items():
                m = self.by_model.setdefault(model, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
                m["calls"] += calls
                m["tokens_in"] += tin
                m["tokens_out"] += tout
            event["by_model"] = by_model
            self._llm_stats(step, label, results)
            event["agents_per_second"] = round(event["agents"] / seconds, 1) if seconds > 0 else None
            samples = [s for r in results for s in r["error_samples"]][:20]
            if samples:
                self.emit({"type": "agent_errors", "step": step["id"], "iteration": label, "count": event["errors"],
                           "samples": samples, "span": step["span"]})
        else:
            event["agents"] = int(sum(results))
            self.totals["agents"] += event["agents"]
        self.emit(event)
        if method == "ask":
            self._models_event()
        self._shards_event([pop])

    def _llm_stats(self, step, label, results) -> None:
        """Fold the shards' LLM logs into per-model totals; every retry and failure becomes an event."""
        for r in results:
            for model, stats in r.get("llm", {}).items():
                m = self.by_model.setdefault(model, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
                for key in ("retries", "reasks", "cache_hits", "failures", "cache_read", "cache_write"):
                    m[key] = m.get(key, 0) + stats[key]
                latency.add(self.latencies.setdefault(model, {}), stats["latencies"])
                for event in stats["events"]:
                    self.emit(dict(event, step=step["id"], iteration=label))

    def context(self, variables, step, label, exprs) -> dict:
        aggregates = {}
        for expr in exprs:
            if expr is not None:
                aggregates.update(self.aggregates(expr, variables))
        aggregates.update(self.queries(exprs, variables, step))
        context = {"variables": variables, "env": self.shared_env(), "aggregates": aggregates, "seed": self.plan.seed,
                   "where": step["id"] + label}
        specs = [spec for expr in exprs if expr is not None for spec in environments.via_specs(expr)]
        if specs:
            aggregates.update(self.via_values(specs, dict(context, aggregates=dict(aggregates))))
        return context

    def via_values(self, specs, context) -> dict:
        """Group aggregates (map-reduce over shard partials, one value per group) and the columns
        that neighbour aggregates reduce over (one value per agent of the network's population)."""
        values = {}
        by_group: dict[str, list] = {}
        for spec in specs:
            if "group" in spec["via"]:
                by_group.setdefault(self.plan.groups[spec["via"]["group"]]["population"], []).append(spec)
            else:
                pop = self.plan.environments[spec["via"]["neighbors"]].population
                values[agg_key(spec)] = _concat(self.executor.call(pop, "column", spec["arg"], context))
        for pop, group_specs in by_group.items():
            per_shard = self.executor.call(pop, "group_partials", group_specs, context)
            for i, spec in enumerate(group_specs):
                values[agg_key(spec)] = groups.combine(spec, [parts[i] for parts in per_shard])
        return values

    def shared_env(self) -> dict:
        """The environment values shards see: a Python kind's state stays here (its queries travel
        as values, see queries), only its declared fields go out."""
        return {name: values if self.plan.environments[name].kind != "python"
                else {f: values[f] for f in self.plan.environments[name].fields}
                for name, values in self.env.items()}

    def queries(self, exprs, variables, step) -> dict:
        """Python environment queries inside `exprs`, computed here: agg_key(node) -> value (one
        value, or a numpy column over the environment's population that shards index by agent id)."""
        out = {}
        for node in _walk(exprs):
            if "method" in node and "id" not in node and self.plan.environments[node["env"]].kind == "python":
                out[agg_key(node)] = self._query(node, variables, step)
        return out

    def _method_here(self, node, variables, step):
        """An environment method's one value, in the driver (`record`, `let`, `if`, env updates)."""
        env = self.plan.environments[node["env"]]
        if env.kind == "python":
            value = self._query(node, variables, step)
            if isinstance(value, np.ndarray):
                raise RunFailed(f"{node['env']}.{node['method']}() is one value per agent; store it in a state "
                                "field first and aggregate that", step)
            return value
        if node["method"] == "recent":
            n = int(self.value(node["args"][0], variables, step))
            return list(self.env[env.name].get("posts", [])[-n:]) if n > 0 else []
        raise RunFailed(f"{node['env']}.{node['method']}() is one value per agent here; aggregate it in a prompt "
                        "or a state update instead", step)

    def _query(self, node, variables, step):
        args = [self.value(a, variables, step) for a in node["args"]]
        try:
            return self.extensions.query(node["env"], node["method"], self.env[node["env"]], args)
        except ExtensionError as e:
            raise RunFailed(str(e), step) from None
        except Exception as e:  # the user's method failed: the run stops with their error and our step
            raise RunFailed(f"{node['env']}.{node['method']}(): {type(e).__name__}: {e}", step) from None

    def aggregates(self, expr, variables) -> dict:
        """Compute every population aggregate inside `expr` with one partials call per population."""
        specs: dict[str, list] = {}
        for node in _walk(expr):
            if "agg" in node and "via" not in node:
                specs.setdefault(node["pop"], []).append(node)
        values = {}
        for pop, nodes in specs.items():
            unique = {agg_key(n): n for n in nodes}
            ordered = [unique[k] for k in sorted(unique)]
            context = {"variables": variables, "env": self.shared_env(), "aggregates": self.queries(nodes, variables, None),
                       "seed": self.plan.seed, "where": ""}
            per_shard = self.executor.call(pop, "partials", ordered, context)
            for i, spec in enumerate(ordered):
                values[agg_key(spec)] = combine(spec, [parts[i] for parts in per_shard])
        return values

    def value(self, expr, variables, step):
        aggregates = self.aggregates(expr, variables)

        def resolve(node):
            if "var" in node:
                return variables[node["var"]]
            if "method" in node:
                return self._method_here(node, variables, step)
            if "env" in node:
                return self.env[node["env"]][node["field"]]
            if "agg" in node:
                return aggregates[agg_key(node)]
            raise EvalError(f"cannot evaluate {sorted(node)} here")

        try:
            return evaluate(expr, resolve)
        except EvalError as e:
            raise RunFailed(e.message, step) from None


def _concat(parts: list) -> np.ndarray:
    if any(p.dtype == object for p in parts):
        out = np.empty(sum(len(p) for p in parts), dtype=object)
        out[:] = [v for p in parts for v in p.tolist()]
        return out
    return np.concatenate(parts) if parts else np.zeros(0)


def _walk(expr):
    if isinstance(expr, dict):
        yield expr
        for v in expr.values():
            yield from _walk(v)
    elif isinstance(expr, list):
        for v in expr:
            yield from _walk(v)


def _plain_frames(frames: list) -> list:
    """Frames as JSON: variables copied (they are plain values: numbers, text, lists, records)."""
    return [{k: (dict(v) if k == "variables" else v) for k, v in f.items()} for f in frames]
