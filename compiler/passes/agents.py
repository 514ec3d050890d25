"""Pass 6, agents: `extends` resolved; persona, model, memory, outputs and state checked.

Reads: ctx.decls["agent"], ctx.models, ctx.persona_fields. Adds: ctx.agents (the resolved settings,
with state types and start nodes still unlowered: the states pass types them).
"""
from __future__ import annotations

import dataclasses

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from ..context import Context
from ..types import Ty, assignable, describe
from ..values import constant, in_range, output_type


# ------------------------------------------------------------------ agents
def check_agents(ctx: Context) -> None:
    """Resolve `extends`, check persona, model and memory; type-check system prompts and state."""
    resolved: dict[str, dict] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict | None:
        if name in resolved:
            return resolved[name]
        decl = ctx.decls["agent"][name]
        base: dict = {"settings": {}, "state": {}, "memory": None}
        if decl.extends:
            if decl.extends in chain or decl.extends == name:
                cycle = chain[chain.index(decl.extends):] if decl.extends in chain else ()
                ctx.error("E1036", decl.extends_span, "agents extend each other in a cycle" if cycle else f"agent `{name}` extends itself",
                          hint=f"the cycle: {' -> '.join(cycle + (name, decl.extends))}")
                base["broken"] = True
            elif decl.extends not in ctx.decls["agent"]:
                ctx.error("E1036", decl.extends_span, f"unknown agent `{decl.extends}`",
                          hint=did_you_mean(decl.extends, set(ctx.decls["agent"]) - {name}) or
                          f"declare it: agent {decl.extends} {{ ... }}")
                base["broken"] = True
            else:
                parent = resolve(decl.extends, chain + (name,))
                if parent:
                    base = {"settings": dict(parent["settings"]), "state": dict(parent["state"]), "memory": parent["memory"],
                            "broken": parent.get("broken", False)}
        for s in decl.settings:
            base["settings"][s.name] = s
        for st in decl.state:
            base["state"][st.name] = st
        if decl.memory is not None:
            base["memory"] = decl.memory
        resolved[name] = base
        return base

    for name, decl in ctx.decls["agent"].items():
        info = resolve(name, ())
        settings = info["settings"]
        allowed = ("persona", "model", "system", "description")
        for key, s in settings.items():
            if key not in allowed:
                ctx.error("E1009", s.name_span, f"an agent has no setting `{key}`",
                          hint=did_you_mean(key, allowed + ("memory", "state")) or
                          "settings: persona, model, system, memory = last N, state NAME: TYPE = DEFAULT")
        persona = _ref(ctx, settings.get("persona"), "persona", "E1004")
        model = _ref(ctx, settings.get("model"), "model", "E1003")
        if settings.get("model") is None and not info.get("broken"):  # a broken `extends` was reported already
            ctx.error("E1022", decl.name_span, f"agent `{name}` needs a model", hint="model = NAME, a model declared in this scenario")
        memory = 0
        if info["memory"] is not None:
            _, memory, ok = constant(ctx, info["memory"], "memory")
            if not ok or not isinstance(memory, int) or isinstance(memory, bool) or not 0 <= memory <= 1000:
                ctx.error("E1022", info["memory"].span, "memory = last N takes a whole number from 0 to 1000")
                memory = 0
        state = {}
        for st_name, st in info["state"].items():
            ty = output_type(ctx, st.type)
            extra = {"out_of_range": "clip"} if st.clip else {}
            if st.clip and ty.low is None and ty.high is None:
                ctx.error("E1010", st.span, f"`clip` keeps `{st_name}` inside its range, and it has none",
                          hint=f"state {st_name}: {describe(ty)} in LOW..HIGH clip = ...")
            if _per_agent(st.default):  # `= persona.income * 0.1`: typed once the agent's fields are known
                state[st_name] = {"type": ty, "default": _start_value(ty), "span": st.span, "node": st.default, **extra}
                continue
            vty, default, ok = constant(ctx, st.default, f"the default of `{st_name}`")
            if ok and ty.kind == "enum" and vty.kind in ("str", "int", "float") and default not in ty.values:
                ctx.error("E1010", st.default.span, f"{default!r} is not one of the values of {describe(ty)}")
            elif ok and not (ty.kind == "enum" and default in ty.values) and not assignable(ty, vty):
                ctx.error("E1010", st.default.span, f"state `{st_name}` is {describe(ty)}, but its default is {describe(vty)}")
            if ok and not in_range(default, ty):
                ctx.error("E1010", st.default.span, f"the default {default!r} is outside {describe(ty)}")
            if ok and ty.kind == "float" and isinstance(default, int):
                default = float(default)
            state[st_name] = {"type": ty, "default": default, "span": st.span, **extra}
        ctx.agents[name] = {"name": name, "persona": persona, "model": model, "memory": memory, "state": state,
                            "system": settings.get("system"), "span": decl.span, "name_span": decl.name_span}


def _per_agent(e) -> bool:
    """Does a start value read the agent (`persona.x`, `self.id`) or draw (`random()`)? Then it is
    computed per agent at start."""
    if isinstance(e, n.Name):
        return e.id in ("persona", "self")
    if isinstance(e, n.Call) and isinstance(e.func, n.Name) and e.func.id in ("random", "choice"):
        return True  # a draw per agent
    if isinstance(e, n.Node):
        return any(_per_agent(getattr(e, f.name)) for f in dataclasses.fields(e) if f.name != "span")
    if isinstance(e, (tuple, list)):
        return any(_per_agent(v) for v in e)
    return False


def _start_value(ty: Ty):
    """The placeholder start of a field computed per agent: a value of its type, inside its range."""
    if ty.kind == "enum":
        return ty.values[0]
    zero = {"int": 0, "float": 0.0, "bool": False, "str": ""}.get(ty.kind)
    if ty.kind in ("int", "float") and ty.low is not None and zero < ty.low:
        return ty.low if ty.kind == "int" else float(ty.low)
    if ty.kind in ("int", "float") and ty.high is not None and zero > ty.high:
        return ty.high if ty.kind == "int" else float(ty.high)
    return zero if zero is not None else ({"list": []}.get(ty.kind))


def _ref(ctx, setting: n.Setting | None, kind: str, code: str) -> str | None:
    if setting is None:
        return None
    if not isinstance(setting.value, n.Name):
        ctx.error(code, setting.value.span, f"{kind} = NAME names a {kind} declared in this scenario")
        return None
    name = setting.value.id
    if name not in ctx.decls[kind]:
        ctx.error(code, setting.value.span, f"unknown {kind} `{name}`", label=f"no {kind} of this name",
                  hint=did_you_mean(name, ctx.decls[kind]) or f"declare it: {kind} {name} {{ ... }}")
        return None
    return name
