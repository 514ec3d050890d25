"""Agent steps: asks, agent updates, messages and environment methods, sent to every shard at once.

In: the driver (its plan, executor, values and emit) and one typed step. Out: the shards changed,
the answers written (asks/<step>/<iteration>.parquet), and the step's events: step_started, one
shard_finished per shard, step_finished with the step's counts and LLM figures (which the run
state fold adds up), agent_errors with samples, and each retry or failed call as an event.
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from populace.compiler.plan import steps as s
from populace.compiler.plan.extensions import Each, ExtensionError
from populace.runtime.environments import builtin as environments
from populace.runtime.columns import rng
from populace.runtime.store import latency
from populace.runtime.store.rundir import ask_file, partition_dir

from . import failures, ordered
from .errors import BudgetStop, RunFailed
from .values import concat

LLM_COUNTS = ("retries", "reasks", "cache_hits", "failures", "cache_read", "cache_write")


def ask(driver, step: s.Ask, variables, label, depth=0):
    # System prompts may hold aggregates too: they are computed with the step's own.
    systems = [driver.plan.agents[part.agent].system for part in driver.plan.populations[step.population].mixture]
    prompt = step.prompt
    if step.in_order:  # the aggregates over the answer are computed as agents answer (ordered.py)
        prompt = ordered.without_running(step, step.population)
    shard_step(driver, step, variables, label, "ask", [prompt, step.where, *systems])


def set_state(driver, step: s.SetState, variables, label, depth=0):
    shard_step(driver, step, variables, label, "set_state", [step.value, step.where])


def tell(driver, step: s.Tell, variables, label, depth=0):
    target = step.target
    exprs = [step.message, step.where, target.index]
    context = None
    if target.kind in ("group", "neighbors"):
        # The senders' messages are gathered first; each receiver's shard then picks its
        # group mates' or neighbours' lines (they may live on any shard).
        context = driver.values.context(variables, step, label, exprs)
        parts = driver.executor.call(step.sender, "outgoing", step, context)
        if target.kind == "group":
            sent = {"ids": concat([p["ids"] for p in parts]), "keys": concat([p["keys"] for p in parts]),
                    "texts": [t for p in parts for t in p["texts"]]}
        else:
            texts = [None] * driver.plan.populations[step.sender].size
            for p in parts:
                for i, t in zip(p["ids"].tolist(), p["texts"]):
                    texts[i] = t
            sent = {"texts": texts}
        context = dict(context, aggregates=dict(context["aggregates"], _tell=sent))
    shard_step(driver, step, variables, label, "tell", exprs, population=target.population, context=context)


def broadcast(driver, step: s.Broadcast, variables, label, depth=0):
    message = driver.values.value(step.message, variables, step)
    driver.emit({"type": "step_started", "step": step.id, "iteration": label, "op": "broadcast"})
    began = time.monotonic()
    total = 0
    for pop in step.populations:
        total += sum(driver.executor.call(pop, "broadcast", message))
    driver.emit({"type": "step_finished", "step": step.id, "iteration": label, "op": "broadcast",
                 "agents": total, "seconds": round(time.monotonic() - began, 4)})


def call(driver, step: s.Call, variables, label, depth=0):
    """Environment methods: a chat room's posts and a grid's moves, gathered in agent id order."""
    env = driver.plan.environments[step.env]
    pop = step.population
    driver.emit({"type": "step_started", "step": step.id, "iteration": label, "op": "call", "population": pop})
    began = time.monotonic()
    context = driver.values.context(variables, step, label, list(step.args))
    values = driver.env[env.name]
    if env.kind == "chatroom" and step.method == "post":
        keep = int(env.params.get("keep", 50))
        new = [t for part in driver.executor.call(pop, "texts", step.args[0], context, keep) for t in part]
        values["posts"] = (list(values.get("posts", [])) + new)[-keep:] if keep else []
        agents = len(new)
    elif env.kind == "python":
        agents = _act(driver, step, variables, context, values)
    elif env.kind == "grid" and step.method == "move":
        moves = [m for part in driver.executor.call(pop, "column", step.args[0], context) for m in part.tolist()]
        cells = environments.move(env, np.asarray(values["_positions"], dtype=np.int64), moves)
        values["_positions"] = cells.tolist()
        values["_moves"] = values.get("_moves", 0) + 1
        agents = len(moves)
    elif env.kind == "grid" and step.method == "move_to_empty":
        movers = np.concatenate([np.asarray(part, dtype=object) for part in
                                 driver.executor.call(pop, "column", step.args[0], context)])
        movers = np.array([bool(m) if m is not None and m == m else False for m in movers.tolist()], dtype=bool)
        old = np.asarray(values["_positions"], dtype=np.int64)
        cells = environments.move_to_empty(env, old, movers, rng.key(driver.plan.seed, "move_to_empty", step.id + label))
        values["_positions"] = cells.tolist()
        values["_moves"] = values.get("_moves", 0) + 1
        agents = int((cells != old).sum())
    else:
        raise RunFailed(f"`{step.env}.{step.method}` is not a statement", step)
    driver.emit({"type": "step_finished", "step": step.id, "iteration": label, "op": "call", "population": pop,
                 "agents": agents, "seconds": round(time.monotonic() - began, 4)})


def _act(driver, step: s.Call, variables, context, values) -> int:
    """A Python kind's action: per-agent arguments gathered in agent id order, the rest evaluated here."""
    spec = driver.extensions.specs[step.env].methods[step.method]
    args, agents = [], 0
    for arg, kind in zip(step.args, spec.args):
        if isinstance(kind, Each):
            column = [v for part in driver.executor.call(step.population, "column", arg, context) for v in part.tolist()]
            args.append(column)
            agents = len(column)
        else:
            args.append(driver.values.value(arg, variables, step))
    try:
        args = driver.extensions.arguments(step.env, step.method, args)
        driver.env[step.env] = driver.extensions.act(step.env, step.method, values, args)
    except ExtensionError as e:
        raise RunFailed(str(e), step) from None
    except Exception as e:  # the user's method failed: the run stops with their error and our step
        raise RunFailed(f"{step.env}.{step.method}(): {type(e).__name__}: {e}", step) from None
    return agents


# ---------------------------------------------------------------- one call on every shard
def shard_step(driver, step, variables, label, method, exprs, population=None, context=None):
    plan, executor = driver.plan, driver.executor
    pop = population or step.population
    driver.emit({"type": "step_started", "step": step.id, "iteration": label, "op": step.OP,
                 "population": pop, "agents": plan.populations[pop].size})
    began = time.monotonic()
    context = context or driver.values.context(variables, step, label, exprs)
    done = {"agents": 0}
    size = plan.populations[pop].size

    def shard_done(index, result):
        a, b = executor.ranges[pop][index]
        done["agents"] += b - a
        driver.emit({"type": "shard_finished", "step": step.id, "iteration": label, "population": pop,
                     "shard": index, "agents_done": done["agents"], "agents_total": size,
                     "errors": result["errors"] if isinstance(result, dict) else 0})

    on_wait = None
    if method == "ask" and _calls_llm(plan, step, pop):
        def on_wait(pending):
            in_flight: dict = {}
            for load in executor.sample(pop, pending):
                for model, n in load.items():
                    in_flight[model] = in_flight.get(model, 0) + n
            driver.emit({"type": "calls_in_flight", "step": step.id, "iteration": label, "models": in_flight,
                         "shards": len(pending)})

    if method == "ask" and step.in_order:
        results = _in_order(executor, pop, step, context, shard_done)
    else:
        results = executor.call(pop, method, step, context, on_done=shard_done, on_wait=on_wait)
    restart_events(driver, step, label)
    if method == "ask" and any(r.get("budget") for r in results):
        # Paid calls of a step that will be redone: counted now (their replies are cached for the redo).
        driver.emit({"type": "step_interrupted", "step": step.id, "iteration": label, "op": step.OP,
                     "population": pop, "reason": "budget", "by_model": _by_model(results),
                     "llm": _llm_stats(driver, step, label, results)})
        raise BudgetStop(step.id, label)
    seconds = time.monotonic() - began
    event = {"type": "step_finished", "step": step.id, "iteration": label, "op": step.OP, "population": pop,
             "seconds": round(seconds, 4)}
    if method == "ask":
        tables = [r.pop("table") for r in results]
        driver.run_dir.write_tables(ask_file(step.id, label), tables)
        prompts = [r.pop("prompts") for r in results if "prompts" in r]
        if prompts:  # --save-prompts, `populace prompt`: the exact requests of some agents
            driver.run_dir.write_tables("prompts/" + ask_file(step.id, label)[len("asks/"):], prompts)
        for key in ("agents", "calls", "errors", "tokens_in", "tokens_out"):
            event[key] = sum(r[key] for r in results)
        event["by_model"] = _by_model(results)
        event["llm"] = _llm_stats(driver, step, label, results)
        event["agents_per_second"] = round(event["agents"] / seconds, 1) if seconds > 0 else None
        samples = [x for r in results for x in r["error_samples"]][:20]
        if samples:
            driver.emit({"type": "agent_errors", "step": step.id, "iteration": label, "count": event["errors"],
                         "samples": samples, "span": _span_json(step)})
    else:
        event["agents"] = int(sum(results))
    driver.emit(event)
    driver.shards_event([pop])
    if method == "ask" and event["errors"]:
        failures.step_failed(driver, step, label, event["agents"], event["errors"], samples)


def _by_model(results: list) -> dict:
    """model -> [calls, tokens in, tokens out], added over the shards."""
    by_model: dict = {}
    for r in results:
        for model, counts in r.get("by_model", {}).items():
            acc = by_model.setdefault(model, [0, 0, 0])
            for i in range(3):
                acc[i] += counts[i]
    return by_model


def _in_order(executor, pop: str, step, context: dict, shard_done) -> list:
    """`ask ... in order`: shard after shard, each told the running aggregates' partials of the
    shards before it (ordered.py). Every shard gets each turn's call (only the turn's shard works),
    so the calls a restarted shard replays are the same for all shards."""
    prior: dict = {}
    results = []
    for turn in range(len(executor.ranges[pop])):
        result = executor.call(pop, "ask_in_order", step, context, prior, turn)[turn]
        for key, part in result.pop("running").items():
            prior = dict(prior, **{key: [*prior.get(key, ()), part]})
        results.append(result)
        shard_done(turn, result)
        if result.get("budget"):
            break  # the budget is spent: later shards' turns would be refused too
    return results


def _llm_stats(driver, step, label, results) -> dict:
    """The shards' LLM logs as per-model figures for step_finished; every retry and failure an event."""
    out: dict = {}
    for r in results:
        for model, stats in r.get("llm", {}).items():
            m = out.setdefault(model, {k: 0 for k in LLM_COUNTS} | {"latency": {}})
            for key in LLM_COUNTS:
                m[key] += stats[key]
            latency.add(m["latency"], stats["latencies"])
            for event in stats["events"]:
                driver.emit(dict(event, step=step.id, iteration=label))
    return out


def restart_events(driver, step, label) -> None:
    """Shards Ray restarted during the step (or before a failure): one event each."""
    while driver.executor.restarts:
        restart = driver.executor.restarts.pop(0)
        extra = {"step": step.id, "iteration": label} if step is not None else {}
        driver.emit(dict(restart, type="shard_restarted", **extra))


def _calls_llm(plan, step, population: str) -> bool:
    """Does this ask go to a remote model (one whose calls in flight are worth sampling)?"""
    names = {step.model} if step.model else {plan.agents[part.agent].model for part in plan.populations[population].mixture}
    return any(name and not plan.models[name].offline for name in names)


def _span_json(step) -> dict:
    sp = step.span
    return {"file": sp.file, "line": sp.line, "column": sp.column, "end_line": sp.end_line, "end_column": sp.end_column}


def personas(driver) -> None:
    """Persona texts written before the first step (their calls and tokens are the run's), and the
    personas' Parquet table(s)."""
    plan, executor = driver.plan, driver.executor
    # Texts agreed before the shards started (executors.agreed_persona_texts), then the shards' own.
    usage: dict = {}
    for part in [getattr(executor, "write_usage", {})] + [u for pop in sorted(plan.populations)
                                                            for u in executor.call(pop, "take_write_usage")]:
        for model, counts in part.items():
            into = usage.setdefault(model, {})
            for key, value in counts.items():
                into[key] = into.get(key, 0) + value
    if usage:
        driver.emit({"type": "personas_written", "usage": usage})
    tables = {}
    for pop in sorted(plan.populations):
        if plan.populations[pop].persona:
            tables[pop] = executor.call(pop, "persona_table")
    if len(tables) == 1:
        driver.run_dir.write_tables("personas.parquet", next(iter(tables.values())))
    for pop, parts in tables.items():
        if len(tables) > 1:
            driver.run_dir.write_tables(f"personas/{pop}.parquet", parts)


def snapshot(driver, step: s.Snapshot, variables, label, depth=0):
    """`snapshot POP`: every agent's id, kind, state and answers, as `agents/POP/<iteration>/part-0.parquet`."""
    folder = partition_dir(label)
    path = f"agents/{step.population}/" + (f"{folder}/" if folder else "") + "part-0.parquet"
    tables = driver.executor.call(step.population, "snapshot")
    for env in driver.plan.environments.values():  # where each agent stands, for pictures of a grid
        if env.kind == "grid" and env.population == step.population:
            cells = np.asarray(driver.env[env.name]["_positions"], dtype=np.int64)
            width = env.params["width"]
            for i, table in enumerate(tables):
                at = cells[table.column("agent").to_numpy()]
                tables[i] = table.append_column(f"{env.name}_x", pa.array(at % width)) \
                                 .append_column(f"{env.name}_y", pa.array(at // width))
    driver.run_dir.write_tables(path, tables)
    driver.emit({"type": "snapshot", "step": step.id, "iteration": label, "population": step.population, "file": path})
