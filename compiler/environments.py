"""Built-in environment kinds: their parameters (checked at compile time) and their methods.

In: an `environment NAME : kind(args) { fields }` declaration, or a method call `env.method(...)`.
Out: the plan's environment entry (`{"kind": "network", "population": "people", "params": {...}}`)
and the type and plan expression of a method call. Kinds: board (the default), chatroom,
network, grid.
"""
from __future__ import annotations

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from .types import ANY, INT, NONE, STR, Ty, describe, list_of

GENERATORS = {
    "small_world": {"k": int, "p": float},
    "scale_free": {"m": int},
    "random": {"p": float},
    "ring": {"k": int},
    "complete": {},
}

# kind -> parameter name -> (python type or "population" or "generator", required, default)
KINDS: dict[str, dict[str, tuple]] = {
    "board": {},
    "chatroom": {"members": ("population", True, None), "keep": (int, False, 50)},
    "network": {"population": ("population", True, None), "generator": ("generator", False, None),
                "edges": (str, False, None), "directed": (bool, False, False)},
    "grid": {"population": ("population", True, None), "width": (int, True, None), "height": (int, True, None),
             "torus": (bool, False, True), "neighborhood": (str, False, "moore"), "radius": (int, False, 1)},
}
_POSITIONAL = {"chatroom": ("members",), "network": ("population", "generator"), "grid": ("population",)}


def lower_kind(ctx, decl: n.EnvironmentDecl) -> dict:
    """Check an environment's kind and parameters; return {"kind", "population"?, "params"}."""
    from .expressions import Checker, Scope

    kind = decl.kind or "board"
    span = decl.kind_span or decl.span
    if kind not in KINDS:
        ctx.error("E1030", span, f"unknown environment kind `{kind}`",
                  hint=did_you_mean(kind, KINDS) or f"kinds: {', '.join(sorted(KINDS))}")
        return {"kind": "board", "params": {}}
    spec = KINDS[kind]
    given: dict[str, n.Arg] = {}
    positional = list(_POSITIONAL.get(kind, ()))
    for arg in decl.kind_args:
        if arg.key is not None:
            ctx.error("E1030", arg.span, "environment parameters are written name = value")
            continue
        name = arg.name
        if name is None:
            if not positional:
                ctx.error("E1030", arg.span, f"too many positional parameters for {kind}",
                          hint="name them: " + ", ".join(f"{k} = ..." for k in spec))
                continue
            name = positional.pop(0)
        elif name in positional:
            positional.remove(name)
        if name not in spec:
            ctx.error("E1030", arg.span, f"{kind} has no parameter `{name}`",
                      hint=did_you_mean(name, spec) or (f"parameters: {', '.join(spec)}" if spec else f"{kind} takes no parameters"))
            continue
        if name in given:
            ctx.error("E1001", arg.span, f"parameter `{name}` is given twice")
        given[name] = arg
    out: dict = {"kind": kind, "params": {}}
    for name, (typ, required, default) in spec.items():
        arg = given.get(name)
        if arg is None:
            if required:
                ctx.error("E1030", span, f"{kind} needs `{name}`", hint=f"e.g. {kind}({name} = ...)")
            elif default is not None:
                out["params"][name] = default
            continue
        if typ == "population":
            if not isinstance(arg.value, n.Name) or arg.value.id not in ctx.populations:
                ctx.error("E1006", arg.value.span, f"`{name}` must name a population",
                          hint=did_you_mean(getattr(arg.value, "id", ""), ctx.populations))
                continue
            out["population"] = arg.value.id
        elif typ == "generator":
            out["params"]["generator"] = _generator(ctx, arg.value)
        else:
            ty, ir = Checker(ctx, Scope("constant")).expr(arg.value)
            if "lit" not in ir or not _fits(ir["lit"], typ):
                ctx.error("E1030", arg.value.span, f"`{name}` must be a constant {typ.__name__}")
                continue
            out["params"][name] = ir["lit"]
    if kind == "network" and "generator" not in out["params"] and "edges" not in out["params"]:
        ctx.error("E1030", span, "a network needs a generator or an edge list",
                  hint="e.g. network(people, small_world(k = 10, p = 0.1)) or network(people, edges = \"edges.csv\")")
    return out


def _fits(value, typ) -> bool:
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)


def _generator(ctx, e: n.Expr) -> dict:
    from .expressions import Checker, Scope

    if not isinstance(e, n.Call) or not isinstance(e.func, n.Name) or e.func.id not in GENERATORS:
        name = e.func.id if isinstance(e, n.Call) and isinstance(e.func, n.Name) else ""
        ctx.error("E1030", e.span, "unknown network generator",
                  hint=did_you_mean(name, GENERATORS) or "generators: " + ", ".join(f"{g}(...)" for g in GENERATORS))
        return {"name": "complete"}
    name = e.func.id
    spec = GENERATORS[name]
    out = {"name": name}
    order = list(spec)
    for arg in e.args:
        key = arg.name or (order.pop(0) if order else None)
        if key is None or key not in spec:
            ctx.error("E1030", arg.span, f"{name} has no parameter `{arg.name or '?'}`",
                      hint=f"{name}({', '.join(f'{k} = ...' for k in spec)})")
            continue
        if key in order:
            order.remove(key)
        ty, ir = Checker(ctx, Scope("constant")).expr(arg.value)
        if "lit" not in ir or not _fits(ir["lit"], spec[key]):
            ctx.error("E1030", arg.value.span, f"`{key}` must be a constant {spec[key].__name__}")
            continue
        out[key] = ir["lit"]
    missing = [k for k in spec if k not in out]
    if missing:
        ctx.error("E1030", e.span, f"{name} needs {', '.join(missing)}", hint=f"{name}({', '.join(f'{k} = ...' for k in spec)})")
    return out


# kind -> method -> (argument kinds, result type); "column:str" means one str per agent of the members
METHODS: dict[str, dict[str, tuple]] = {
    "chatroom": {"post": (("column:str",), NONE), "recent": (("int",), list_of(STR))},
    "grid": {"move": (("column:str",), NONE)},
    "network": {"degree": ((), INT)},
    "board": {},
}


def method_type(checker, e: n.Call, env: str, kind: str, method: str):
    """Type and plan expression of `env.method(args)`."""
    methods = METHODS.get(kind, {})
    if method not in methods:
        checker.ctx.error("E1013", e.func.span, f"a {kind} has no method `{method}`",
                          hint=did_you_mean(method, methods) or (f"methods: {', '.join(methods)}" if methods else f"a {kind} has no methods"))
        return ANY, {"lit": None}
    arg_kinds, result = methods[method]
    if len(e.args) != len(arg_kinds):
        checker.ctx.error("E1014", e.span, f"{env}.{method} takes {len(arg_kinds)} argument(s), not {len(e.args)}")
        return ANY, {"lit": None}
    irs = []
    for arg, want in zip(e.args, arg_kinds):
        ty, ir = checker.expr(arg.value)
        if want.startswith("column:"):
            if not ty.per_agent or ty.kind not in ("str", "enum", "any"):
                checker.ctx.error("E1010", arg.span, f"{env}.{method} takes one text per agent, not {describe(ty)}",
                                  hint="e.g. the output of an ask: players.post")
        elif ty.per_agent or ty.kind not in (want, "any"):
            checker.ctx.error("E1010", arg.span, f"{env}.{method} takes {want}, not {ty}")
        irs.append(ir)
    per_agent = kind == "network" and method == "degree"
    if per_agent:
        return (INT.column(checker.scope.pop) if checker.scope.kind == "agent" else INT), \
            {"method": method, "env": env, "args": irs}
    return result, {"method": method, "env": env, "args": irs}


__all__ = ["KINDS", "GENERATORS", "METHODS", "lower_kind", "method_type", "Ty"]
