"""Pass 7, populations: sizes, mixtures of agent kinds and the fields every member has.

Reads: ctx.decls["population"], ctx.agents, ctx.persona_fields, ctx.workflow (outputs asked of
members). Adds: ctx.populations (the plan's `populations`) and ctx.population_fields.
"""
from __future__ import annotations

import math

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from ..context import Context, FieldInfo, span_json
from ..types import Ty, describe, to_json
from ..values import constant, output_type, state_json


# ------------------------------------------------------------------ populations and groups
def check_populations(ctx: Context) -> None:
    """Sizes, mixtures (exact counts per kind), the fields each population's agents carry."""
    outputs = _collect_outputs(ctx)
    for name, decl in ctx.decls["population"].items():
        _, size, ok = constant(ctx, decl.size, "a population's size")
        if ok and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            ctx.error("E1029", decl.size.span, f"a population's size must be a whole number >= 1, not {size!r}")
            ok = False
        size = size if ok else 1
        if ok and size > 2**31 - 1:
            ctx.error("E1029", decl.size.span, "a population holds at most 2,147,483,647 agents")
            size = 1
        kinds = []
        if decl.agent is not None:
            if decl.agent not in ctx.agents:
                ctx.error("E1005", decl.agent_span, f"unknown agent `{decl.agent}`",
                          hint=did_you_mean(decl.agent, ctx.agents) or f"declare it: agent {decl.agent} {{ ... }}")
            else:
                kinds.append((decl.agent, 1.0))
        else:
            for share in decl.mixture:
                if share.agent not in ctx.agents:
                    ctx.error("E1005", share.span, f"unknown agent `{share.agent}`", hint=did_you_mean(share.agent, ctx.agents))
                    continue
                _, w, okw = constant(ctx, share.share, "a share")
                if not okw or not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                    ctx.error("E1028", share.share.span, "a share is a number >= 0, like 30% or 0.3")
                    continue
                if share.agent in [k for k, _ in kinds]:
                    ctx.error("E1028", share.span, f"agent `{share.agent}` appears twice in the mixture")
                    continue
                kinds.append((share.agent, float(w)))
            if kinds and sum(w for _, w in kinds) <= 0:
                ctx.error("E1028", decl.span, "the shares add up to zero")
                kinds = []
        counts = _apportion(size, [w for _, w in kinds])
        start, mixture = 0, []
        for (agent, w), count in zip(kinds, counts):
            mixture.append({"agent": agent, "share": w / (sum(x for _, x in kinds) or 1), "start": start, "count": count})
            start += count
        # Kinds may have personas of their own: the population sees every field of them (missing for
        # an agent whose persona lacks it); a field two personas share must have one type.
        own = list(dict.fromkeys(ctx.agents[a]["persona"] for a, _ in kinds))
        persona = own[0] if own else None
        fields: dict[str, FieldInfo] = {}
        for p in own:
            for fname, fty in ctx.persona_fields.get(p, {}).items():
                if fname in fields and fields[fname].ty != fty:
                    joined = _join_field_types(fields[fname].ty, fty)
                    if joined is None:
                        ctx.error("E1028", decl.span, f"persona field `{fname}` is {describe(fields[fname].ty)} in one "
                                  f"kind's persona and {describe(fty)} in `{p}`",
                                  hint="give the field one type in every persona of the mixture, or another name")
                    else:
                        fields[fname] = FieldInfo(joined, "persona", decl.span)
                fields.setdefault(fname, FieldInfo(fty, "persona", decl.span))
        if len(own) > 1:
            written = [p for p in own if p and any(f.get("kind") == "write"
                                                   for f in ctx.plan["personas"].get(p, {}).get("fields", []))]
            if written:
                ctx.error("E1028", decl.span, f"persona `{written[0]}` has text written by a model, and the kinds of "
                          "this mixture have different personas: not supported yet",
                          hint="give the kinds one persona, or put them in populations of their own")
        state_types: dict[str, dict] = {}
        for agent, _ in kinds:
            for sname, st in ctx.agents[agent]["state"].items():
                if sname in state_types and state_types[sname]["type"] != st["type"]:
                    ctx.error("E1028", st["span"], f"state `{sname}` has different types in this population's agent kinds")
                elif sname in state_types and state_types[sname].get("out_of_range") != st.get("out_of_range"):
                    ctx.error("E1028", st["span"], f"state `{sname}` is clipped in one agent kind of this population "
                              "and not in another", hint="write `clip` in every kind, or in none")
                if sname in state_types and st.get("node") is not None and state_types[sname].get("node") is None:
                    state_types[sname] = st  # the population computes starts when any kind does
                state_types.setdefault(sname, st)
        for sname, st in state_types.items():
            if sname not in fields:  # a clash with a persona field is reported once, per agent kind, below
                fields[sname] = FieldInfo(st["type"], "state", st["span"])
        for oname, (oty, ospan) in outputs.get(name, {}).items():
            if oname in fields:
                ctx.error("E1018", ospan, f"the output `{oname}` has the name of a {fields[oname].source} field of `{name}`",
                          hint="name the output differently")
                continue
            fields[oname] = FieldInfo(oty, "output", ospan)
        ctx.population_fields[name] = fields
        ctx.populations[name] = {
            "name": name, "size": size, "persona": persona, "mixture": mixture, "span": span_json(decl.span),
            "state": {k: state_json(v) for k, v in sorted(state_types.items())},  # starts: lower_state_starts
            "outputs": {k: to_json(t) for k, (t, _) in sorted(outputs.get(name, {}).items())},
        }
    # Agent kinds seen on their own (for system prompts): persona + state.
    for agent, info in ctx.agents.items():
        fields = {f: FieldInfo(t, "persona", info["span"]) for f, t in ctx.persona_fields.get(info["persona"], {}).items()}
        for sname, st in info["state"].items():
            if sname in fields:  # the persona field keeps its name: only this error, no false ones after it
                ctx.error("E1001", st["span"], f"state `{sname}` has the name of a field of persona `{info['persona']}`",
                          hint=f"name the state differently, e.g. state my_{sname}: ...")
                continue
            fields[sname] = FieldInfo(st["type"], "state", st["span"])
        ctx.population_fields["agent:" + agent] = fields


def _join_field_types(a: Ty, b: Ty) -> Ty | None:
    """One type for a persona field two kinds' personas both have: the same kind, the ranges (or
    enum values) joined; None when the kinds differ (a number in one, text in the other)."""
    if a.kind != b.kind or a.kind in ("list", "record"):
        return None
    if a.kind == "enum":
        return Ty("enum", values=tuple(dict.fromkeys(a.values + b.values)))
    low = None if a.low is None or b.low is None else min(a.low, b.low)
    high = None if a.high is None or b.high is None else max(a.high, b.high)
    return Ty(a.kind, low=low, high=high)


def _apportion(total: int, weights: list[float]) -> list[int]:
    """Split `total` by weights into whole counts that add up exactly (largest remainder)."""
    if not weights:
        return []
    s = sum(weights) or 1.0
    exact = [total * w / s for w in weights]
    counts = [math.floor(x) for x in exact]
    rest = total - sum(counts)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:rest]:
        counts[i] += 1
    return counts


def _collect_outputs(ctx: Context) -> dict[str, dict[str, tuple[Ty, n.Span]]]:
    """Every ask's output, per population; the same output asked twice must keep its type."""
    out: dict[str, dict[str, tuple[Ty, n.Span]]] = {}

    def walk(stmts):
        for s in stmts:
            if isinstance(s, n.Ask):
                ty = output_type(ctx, s.output.type)
                prev = out.setdefault(s.population, {}).get(s.output.name)
                if prev and prev[0] != ty:
                    ctx.error("E1018", s.output.span, f"`{s.output.name}` was asked before as {describe(prev[0])}, now as {describe(ty)}",
                              hint=f"first asked at line {prev[1].line}; use one type, or another name")
                elif not prev:
                    out[s.population][s.output.name] = (ty, s.output.span)
            for child in _children(s):
                walk(child)

    for wf in ctx.workflow:
        walk(wf.body.body)
    return out


def _children(s):
    if isinstance(s, (n.Repeat, n.For)):
        yield s.body.body
    elif isinstance(s, n.If):
        for _, block in s.branches:
            yield block.body
        if s.orelse:
            yield s.orelse.body
