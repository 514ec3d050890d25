"""`ask POP in order`: one agent after another, each seeing the answers given before it.

In: a shard, the ordered Ask step, its Context, the partials of the running aggregates (those of
the prompt that read the asked answer, e.g. `share(voters.yes)`) from the shards before this one,
and whose turn it is. Out: for the shard whose turn it is, the ask summary of its agents (merged
as if asked at once) and its partials of the running aggregates; None for the others.

Agents answer in id order: shard after shard (the driver passes the partials on), agent after
agent inside a shard. Agent i's prompt sees aggregates over agents 0..i-1's answers of this step
(the answer's column is emptied first, so an earlier round's answers never count); every other
aggregate is the step's, computed once. Calls are N, made one at a time: an ordered ask is as
slow as N calls in a row, on any executor.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from populace.runtime.columns.aggregates import combine
from populace.runtime.columns.vector import agg_key
from populace.runtime.models.base import empty_values

from . import asking


def running_specs(step, population: str) -> list[dict]:
    """The prompt's aggregates over the asked answer (they change after every answer)."""
    out, seen = [], set()
    for node in _walk(step.prompt):
        if "agg" in node and "via" not in node and node.get("pop") == population and _reads(node, step.output.name):
            key = agg_key(node)
            if key not in seen:
                seen.add(key)
                out.append(node)
    return out


def without_running(step, population: str):
    """The prompt with its running aggregates taken out: what the driver computes before the step."""
    keys = {agg_key(spec) for spec in running_specs(step, population)}

    def strip(node):
        if isinstance(node, dict):
            if "agg" in node and agg_key(node) in keys:
                return {"lit": None}
            return {k: strip(v) for k, v in node.items()}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node
    return strip(step.prompt)


def ask_in_order(shard, step, ctx, prior: dict, turn: int) -> dict | None:
    if turn != shard.index:
        return None  # every shard gets each turn's call, so a restarted shard replays them all alike
    specs = running_specs(step, shard.population)
    shard.columns[step.output.name] = empty_values(step.output.type, len(shard.ids))
    shard.types[step.output.name] = step.output.type
    order = np.flatnonzero(shard.mask(step.where, shard.frame(), ctx))
    parts = []
    alone = _renders_alone(shard, step)
    for local in order.tolist():
        frame = shard.frame()
        for spec in specs:  # this agent sees the answers before it: earlier shards', then this shard's
            ctx.aggregates[agg_key(spec)] = combine(spec, list(prior.get(agg_key(spec), ())) +
                                                    [shard._partial(spec, frame, ctx)])
        own = _one(shard, local) if alone else None  # render this agent's prompt only, not everyone's
        parts.append(asking.ask(shard, step, ctx, only=local, frame=own))
        if parts[-1].get("budget"):
            break  # the run's budget is spent: the run stops after this ask
    frame = shard.frame()
    summary = merge(parts) if parts else asking.ask(shard, step, ctx)  # none selected here: an empty summary
    summary["running"] = {agg_key(spec): shard._partial(spec, frame, ctx) for spec in specs}
    return summary


def _renders_alone(shard, step) -> bool:
    """Can one agent's prompt and system prompt be rendered from its own row? Not when they read the
    shard's groups, neighbours or environment methods (those index the whole shard)."""
    systems = [shard.plan.agents[name].system for name, _ in shard.kinds]
    return not any("via" in node or "method" in node for node in _walk([step.prompt, step.where, systems]))


def _one(shard, local: int):
    from populace.runtime.columns.vector import Frame

    cut = slice(local, local + 1)
    return Frame(columns={k: v[cut] for k, v in shard.columns.items()}, ids=shard.ids[cut], types=shard.types,
                 world=shard, kinds=shard.kind_column[cut])


def merge(parts: list[dict]) -> dict:
    """One ask summary from the summaries of agents asked one at a time."""
    out = {"agents": 0, "errors": 0, "calls": 0, "tokens_in": 0, "tokens_out": 0, "error_samples": []}
    for p in parts:
        for key in ("agents", "errors", "calls", "tokens_in", "tokens_out"):
            out[key] += p[key]
        room = asking.MAX_ERROR_SAMPLES - len(out["error_samples"])
        out["error_samples"].extend(p["error_samples"][:max(room, 0)])
        for model, counts in p.get("by_model", {}).items():
            acc = out.setdefault("by_model", {}).setdefault(model, [0, 0, 0])
            for i in range(3):
                acc[i] += counts[i]
        for model, log in p.get("llm", {}).items():
            acc = out.setdefault("llm", {}).setdefault(
                model, {**{k: 0 for k in asking.LLM_COUNTS}, "latencies": [], "events": []})
            for key in asking.LLM_COUNTS:
                acc[key] += log[key]
            acc["latencies"].extend(log["latencies"][:max(2000 - len(acc["latencies"]), 0)])
            acc["events"].extend(log["events"])
    if any(p.get("budget") for p in parts):
        out["budget"] = True
    out["table"] = pa.concat_tables([p["table"] for p in parts])
    prompts = [p["prompts"] for p in parts if "prompts" in p]
    if prompts:
        out["prompts"] = pa.concat_tables(prompts)
    return out


def _reads(node, name: str) -> bool:
    return any(n.get("col") == name and n.get("src") == "output" for n in _walk(node))


def _walk(expr):
    if isinstance(expr, dict):
        yield expr
        for v in expr.values():
            yield from _walk(v)
    elif isinstance(expr, list):
        for v in expr:
            yield from _walk(v)
