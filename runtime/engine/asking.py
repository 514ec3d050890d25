"""One ask on one shard: every selected agent's prompt to its kind's model, the answers stored.

In: a Shard, a typed Ask step and the step's Context (variables, environment values, aggregates).
Out: the answers in the shard's output column and memory, and a summary for the driver: counts,
per-model calls and tokens, LLM logs (retries, re-asks, cache use, latencies, events), up to
MAX_ERROR_SAMPLES failed answers, and a pyarrow table of every asked agent's prompt hash, reply,
value and error (the driver writes it as the step's Parquet file).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from populace.runtime.columns import rng
from populace.runtime.columns.vector import evaluate, is_vector, render_column
from populace.runtime.models import requests
from populace.runtime.models.base import AskBatch, empty_values
from populace.runtime.store.tables import arrow_values

MAX_ERROR_SAMPLES = 20
LLM_COUNTS = ("retries", "reasks", "cache_hits", "failures", "cache_read", "cache_write")


def ask(shard, step, ctx, only: int | None = None, frame=None) -> dict:
    """Ask every agent the step selects (or, with `only`, that one local agent if selected). `frame`
    may be that one agent's own frame (ordered.py): prompts are then rendered for it alone."""
    offset = only if frame is not None else 0  # where `frame`'s first row is among the shard's agents
    frame = frame if frame is not None else shard.frame()
    mask = np.zeros(len(shard.ids), dtype=bool)
    mask[offset:offset + frame.size] = shard.mask(step.where, frame, ctx)
    if only is not None:
        one = np.zeros(len(mask), dtype=bool)
        one[only] = mask[only]
        mask = one
    prompt = evaluate(step.prompt, frame, ctx)
    out_name, out_type = step.output.name, step.output.type
    column = shard.columns.get(out_name)
    if column is None:
        column = shard.columns[out_name] = empty_values(out_type, len(shard.ids))
        shard.types[out_name] = out_type
    ids_parts, hash_parts, reply_parts, error_parts, value_index = [], [], [], [], []
    summary = {"agents": 0, "errors": 0, "calls": 0, "tokens_in": 0, "tokens_out": 0, "error_samples": []}
    state_fields = shard.plan.populations[shard.population].state
    capture = _wanted(shard, step, ctx)
    prompts: list = []
    for agent_name, local in shard.kinds:
        sel = np.flatnonzero(mask[local]) + local.start
        if not len(sel):
            continue
        agent = shard.plan.agents[agent_name]
        model_name = step.model or agent.model
        model = shard.model(model_name)
        system, shared = _system(agent, frame, ctx, sel - offset)
        sub_prompt = [prompt[i - offset] for i in sel.tolist()] if is_vector(prompt) else prompt
        batch = AskBatch(
            ids=shard.ids[sel], prompt=sub_prompt, system=system, memory_chars=shard.memory.chars_of(sel),
            output=out_type, where=ctx.where, seed=shard.seed,
            persona={k: shard.columns[k][sel] for k in shard.persona_fields},
            state={k: shard.columns[k][sel] for k in state_fields},
            variables=ctx.variables, env=ctx.env, memory=lambda i, sel=sel: shard.memory.of(int(sel[i])),
            shards=shard.shards, verbatim=bool(getattr(step, "verbatim", False)), system_shared=shared,
        )
        answers = model.ask(batch)
        if capture is not None:
            _capture(shard, capture, batch, sel, model_name, prompts)
        column[sel] = answers.values
        replies = answers.replies if answers.replies is not None else render_column(answers.values, out_type)
        shard.memory.remember(sel, sub_prompt, replies)
        ids_parts.append(shard.ids[sel])
        hash_parts.append(_hashes(sub_prompt, len(sel)))
        reply_parts.extend(r if e is None or answers.replies is not None else None
                           for r, e in zip(replies, answers.errors))
        error_parts.extend(answers.errors)
        value_index.append(sel)
        _count(summary, model_name, sel, answers, shard.ids)
        if getattr(answers, "budget_hit", False):
            summary["budget"] = True  # the run's budget is spent: the driver stops the run after this ask
            break
    if prompts:
        summary["prompts"] = pa.Table.from_pylist(prompts, schema=PROMPT_SCHEMA)
    sel_all = np.concatenate(value_index) if value_index else np.zeros(0, dtype=np.int64)
    summary["table"] = pa.table({
        "agent": pa.array(np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64), pa.int64()),
        "kind": pa.array(shard.kind_column[sel_all].tolist(), pa.string()).dictionary_encode(),
        "prompt_hash": pa.array(np.concatenate(hash_parts) if hash_parts else np.zeros(0, np.int64), pa.int64()),
        "reply": pa.array(reply_parts, pa.string()),
        "value": arrow_values(column[sel_all], out_type),
        "error": pa.array(error_parts, pa.string()),
    })
    return summary


PROMPT_SCHEMA = pa.schema([("agent", pa.int64()), ("model", pa.string()), ("system", pa.string()),
                           ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))])


def _wanted(shard, step, ctx) -> dict | None:
    """The prompts to keep for this ask (`--save-prompts`, `populace prompt`), or None."""
    wanted = shard.options.get("prompts")
    if not wanted:
        return None
    if wanted.get("step") and ctx.where != wanted["step"] + wanted.get("iteration", ""):
        return None
    return wanted


def _capture(shard, wanted: dict, batch, sel, model_name: str, prompts: list) -> None:
    """The exact request (system, memory, prompt with its instruction) of the chosen agents of `sel`."""
    ids = shard.ids[sel]
    if wanted.get("agents") is not None:
        chosen = np.flatnonzero(np.isin(ids, np.asarray(wanted["agents"], dtype=np.int64)))
    else:
        chosen = np.flatnonzero(rng.uniforms(ids, rng.key(shard.seed, "save-prompts")) < wanted.get("share", 0.01))
    for i in chosen.tolist():
        prompt = batch.prompt if isinstance(batch.prompt, str) else batch.prompt[i]
        system = batch.system if batch.system is None or isinstance(batch.system, str) else batch.system[i]
        sent = requests.request(system, batch.memory(i), prompt, batch.output, batch.verbatim)
        prompts.append({"agent": int(ids[i]), "model": model_name, **sent})


def _hashes(prompt, n: int) -> np.ndarray:
    """The prompt's hash per agent (the run directory keeps hashes; equal prompts hash once)."""
    if isinstance(prompt, str):
        return np.full(n, rng.text_hash(prompt), dtype=np.int64)
    cache: dict = {}
    return np.fromiter((cache[p] if p in cache else cache.setdefault(p, rng.text_hash(p)) for p in prompt),
                       dtype=np.int64, count=n)


def _count(summary: dict, model_name: str, sel, answers, ids) -> None:
    n_err = sum(e is not None for e in answers.errors)
    summary["agents"] += len(sel)
    summary["errors"] += n_err
    summary["calls"] += answers.calls
    summary["tokens_in"] += answers.tokens_in
    summary["tokens_out"] += answers.tokens_out
    counts = summary.setdefault("by_model", {}).setdefault(model_name, [0, 0, 0])
    counts[0] += answers.calls
    counts[1] += answers.tokens_in
    counts[2] += answers.tokens_out
    log = getattr(answers, "log", None)
    if log is not None:  # an LLM: retries, re-asks, cache use, latencies
        llm = summary.setdefault("llm", {}).setdefault(
            model_name, {**{k: 0 for k in LLM_COUNTS}, "latencies": [], "events": []})
        for key in LLM_COUNTS:
            llm[key] += getattr(log, key)
        llm["latencies"].extend(round(x, 4) for x in log.latencies[:2000])
        llm["events"].extend(log.events)
    if n_err and len(summary["error_samples"]) < MAX_ERROR_SAMPLES:
        for i, e in enumerate(answers.errors):
            if e is not None:
                summary["error_samples"].append({"agent": int(ids[sel[i]]), "error": e})
                if len(summary["error_samples"]) >= MAX_ERROR_SAMPLES:
                    break


def _system(agent, frame, ctx, sel):
    """The selected agents' system prompts, and how many leading characters all of them share."""
    if agent.system is None:
        return None, 0
    value = evaluate(agent.system, frame, ctx)
    if not is_vector(value):
        return value, len(value)
    return [value[i] for i in sel.tolist()], _shared_length(agent.system, frame, ctx)


def _shared_length(template, frame, ctx) -> int:
    """Characters of the system template's leading parts that are the same for every agent (text,
    params, environment values, aggregates): the provider may cache that prefix once for everyone
    (a second cache breakpoint, models/llm.py), not only each agent's whole system prompt."""
    parts = template.get("template") if isinstance(template, dict) else None
    if not isinstance(parts, list):
        return 0
    shared = 0
    for part in parts:
        if isinstance(part, str):
            shared += len(part)
            continue
        value = evaluate({"template": [part]}, frame, ctx)
        if is_vector(value):
            break  # the first per-agent part: the shared prefix ends here
        shared += len(value)
    return shared
