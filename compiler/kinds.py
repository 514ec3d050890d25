"""Built-in environment kinds: their parameters (checked at compile time) and their methods.

In: an `environment NAME : kind(args) { fields }` declaration, or a method call `env.method(...)`.
Out: the plan's environment entry (`{"kind": "network", "population": "people", "params": {...}}`)
and the type and plan expression of a method call. Kinds: board (the default), chatroom,
network, grid.
"""
from __future__ import annotations

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from .types import ANY, BOOL, FLOAT, INT, NONE, STR, Ty, assignable, describe, list_of

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
             "torus": (bool, False, True), "neighborhood": (str, False, "moore"), "radius": (int, False, 1),
             "occupancy": (str, False, None)},  # None: "many" (agents may share a cell)
}
_POSITIONAL = {"chatroom": ("members",), "network": ("population", "generator"), "grid": ("population",)}


def lower_kind(ctx, decl: n.EnvironmentDecl) -> dict:
    """Check an environment's kind and parameters; return {"kind", "population"?, "params"}."""

    kind = decl.kind or "board"
    span = decl.kind_span or decl.span
    extension = None
    if kind in KINDS:
        spec = KINDS[kind]
        positional = list(_POSITIONAL.get(kind, ()))
    else:
        extension = find_extension(ctx, kind, span)
        if extension is None:  # reported: its methods are not reported again (`_unknown`)
            return {"kind": "board", "params": {}, "_unknown": True}
        spec = {k: (p.type, p.required, p.default) for k, p in extension.params.items()}
        positional = list(spec)  # a Python kind's parameters may be given in declaration order
    given: dict[str, n.Arg] = {}
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
    if extension is not None:
        out = {"kind": "python", "params": {}, "extension": {"kind": kind, "class": extension.target,
                                                               "signature": extension.signature()}}
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
            ok, value = _constant(ctx, arg.value)
            if not ok:
                ctx.error("E1030", arg.value.span, f"`{name}` must be a constant {typ.__name__}",
                          hint="a value known before the run: literals, param.NAME and arithmetic on them")
                continue
            if not _fits(value, typ):
                ctx.error("E1030", arg.value.span, f"`{name}` must be {_article(typ.__name__)} {typ.__name__}, "
                          f"not {type(value).__name__ if value is not None else 'none'}")
                continue
            if extension is not None and not _in_range(ctx, arg.value.span, name, value, extension.params[name]):
                continue
            out["params"][name] = float(value) if typ is float else value
    if kind == "network" and "generator" not in out["params"] and "edges" not in out["params"]:
        ctx.error("E1030", span, "a network needs a generator or an edge list",
                  hint="e.g. network(people, small_world(k = 10, p = 0.1)) or network(people, edges = \"edges.csv\")")
    if kind == "grid":
        _check_occupancy(ctx, decl, out)
    return out


def _check_occupancy(ctx, decl, out: dict) -> None:
    """`occupancy = "one"`: at most one agent per cell, so the grid must have a cell for each."""
    params = out["params"]
    occupancy = params.get("occupancy") or "many"
    span = next((a.value.span for a in decl.kind_args if a.name == "occupancy"), decl.span)
    if occupancy not in ("one", "many"):
        ctx.error("E1030", span, f"occupancy is \"one\" (at most one agent per cell) or \"many\", not {occupancy!r}")
        return
    pop = ctx.populations.get(out.get("population") or "", {})
    cells = params.get("width", 0) * params.get("height", 0)
    if occupancy == "one" and pop and pop["size"] > cells:
        ctx.error("E1030", span, f"{pop['size']:,} agents cannot have a cell each on a grid of {cells:,} cells",
                  hint="make the grid larger, or occupancy = \"many\"")


def find_extension(ctx, kind: str, span):
    """The Python kind `kind` from the scenario's extensions or an installed entry point, or None (reported)."""
    from .plan.extensions import ExtensionError, entry_point_kind

    spec = ctx.extension_kinds.get(kind)
    if spec is not None:
        return spec
    try:
        spec = entry_point_kind(kind)
    except ExtensionError as e:
        ctx.error("E1030", span, str(e), hint="reinstall or fix the package that offers it")
        return None
    if spec is None and ctx.extensions_failed:
        return None  # most likely in the module that failed to load, which is reported already
    if spec is None:
        known = sorted(KINDS) + sorted(ctx.extension_kinds)
        ctx.error("E1030", span, f"unknown environment kind `{kind}`",
                  hint=did_you_mean(kind, known) or f"kinds: {', '.join(known)}; Python kinds come from the "
                  "scenario's `extensions` or installed packages (docs/extensions.md)")
        return None
    ctx.extension_kinds[kind] = spec
    return spec


def _in_range(ctx, span, name: str, value, p) -> bool:
    """A Python kind's declared choices and bounds."""
    from .plan.extensions import param_problem

    problem = param_problem(p, value)
    if problem:
        ctx.error("E1030", span, f"`{name}` {problem}",
                  hint=did_you_mean(str(value), [str(c) for c in p.choices]) if p.choices else None)
        return False
    return True


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _constant(ctx, e: n.Expr) -> tuple[bool, object]:
    """(True, value) for an expression known before the run (`-1.5`, `param.n * 2`), else (False, None)."""
    from .expressions import Checker, Scope
    from .plan.evaluate import EvalError, evaluate, is_constant

    _, ir = Checker(ctx, Scope("constant")).expr(e)
    if "lit" in ir:
        return True, ir["lit"]
    if not is_constant(ir):
        return False, None
    try:
        return True, evaluate(ir)
    except EvalError:
        return False, None


def _fits(value, typ) -> bool:
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)


def _generator(ctx, e: n.Expr) -> dict:

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
        ok, value = _constant(ctx, arg.value)
        if not ok or not _fits(value, spec[key]):
            ctx.error("E1030", arg.value.span, f"`{key}` must be a constant {spec[key].__name__}")
            continue
        out[key] = value
    missing = [k for k in spec if k not in out]
    if missing:
        ctx.error("E1030", e.span, f"{name} needs {', '.join(missing)}", hint=f"{name}({', '.join(f'{k} = ...' for k in spec)})")
    return out


# kind -> method -> (argument kinds, result type); "column:str" means one str per agent of the members
METHODS: dict[str, dict[str, tuple]] = {
    "chatroom": {"post": (("column:str",), NONE), "recent": (("int",), list_of(STR))},
    "grid": {"move": (("column:str",), NONE), "move_to_empty": (("column:bool",), NONE), "x": ((), INT), "y": ((), INT)},
    "network": {"degree": ((), INT)},
    "board": {},
}
STATEMENTS = {("chatroom", "post"), ("grid", "move"), ("grid", "move_to_empty")}  # the built-in methods that are statements
PER_AGENT = {("network", "degree"), ("grid", "x"), ("grid", "y")}  # the built-in methods that give one value per agent


def python_type(t) -> Ty:
    """The compiler type of an extension's declared python type (int, float, str, bool, list[...])."""
    if getattr(t, "__origin__", None) is list:
        return list_of(python_type(t.__args__[0]))
    return {int: INT, float: FLOAT, str: STR, bool: BOOL}[t]


def methods_of(ctx, env: str) -> dict[str, tuple]:
    """env's methods: name -> (argument kinds, result type, statement?, per agent?)."""
    info = ctx.environments[env]
    kind = info["kind"]
    if info.get("_unknown"):
        return None
    if kind != "python":
        return {m: (args, result, (kind, m) in STATEMENTS, (kind, m) in PER_AGENT)
                for m, (args, result) in METHODS.get(kind, {}).items()}
    from .plan.extensions import Each

    spec = ctx.extension_kinds[info["extension"]["kind"]]
    out = {}
    for name, m in spec.methods.items():
        args = tuple(f"column:{python_type(a.type).kind}" if isinstance(a, Each) else python_type(a) for a in m.args)
        out[name] = (args, NONE if m.role == "action" else python_type(m.returns), m.role == "action", m.per_agent)
    return out


def method_type(checker, e: n.Call, env: str, kind: str, method: str, statement: bool = False):
    """Type and plan expression of `env.method(args)` (`statement`: written as a workflow statement)."""
    methods = methods_of(checker.ctx, env)
    if methods is None:  # the environment's kind was already reported as unknown
        for arg in e.args:
            checker.expr(arg.value)
        return ANY, {"lit": None}
    shown = checker.ctx.environments[env].get("extension", {}).get("kind", kind)
    if method not in methods:
        checker.ctx.error("E1013", e.func.span, f"a {shown} has no method `{method}`",
                          hint=did_you_mean(method, methods) or (f"methods: {', '.join(methods)}" if methods else f"a {shown} has no methods"))
        return ANY, {"lit": None}
    arg_kinds, result, is_statement, per_agent = methods[method]
    if is_statement and not statement:
        checker.ctx.error("E1013", e.span, f"`{env}.{method}(...)` is a statement, not a value",
                          hint=f"write it on a line of its own in the workflow: {env}.{method}(...)")
        return ANY, {"lit": None}
    if statement and not is_statement:
        checker.ctx.error("E1013", e.span, f"`{env}.{method}(...)` gives a value; it is not a statement",
                          hint=f"use it in an expression or a prompt, e.g. record x = {env}.{method}(...)")
        return ANY, {"lit": None}
    if len(e.args) != len(arg_kinds):
        checker.ctx.error("E1014", e.span, f"{env}.{method} takes {len(arg_kinds)} argument(s), not {len(e.args)}")
        return ANY, {"lit": None}
    pop = checker.ctx.environments[env].get("population")
    irs = []
    for arg, want in zip(e.args, arg_kinds):
        value = arg.value
        if want == "column:bool" and isinstance(value, n.Filtered) and isinstance(value.value, n.Name) \
                and value.value.id == pop:
            # `world.move_to_empty(players where COND)`: COND in each agent's view (self., neighbours)
            from .expressions import Checker, Scope

            ty, ir = Checker(checker.ctx, Scope("agent", pop=pop, variables=dict(checker.scope.variables))).expr(value.where)
            ty = ty.column(pop) if not ty.per_agent else ty
        else:
            ty, ir = checker.expr(value)
        if isinstance(want, str) and want.startswith("column:"):
            kind_wanted = want.split(":", 1)[1]
            ok_kinds = ("str", "enum", "any") if kind_wanted == "str" else \
                (("int", "float", "bool", "any") if kind_wanted == "float" else (kind_wanted, "any"))
            if not ty.per_agent or ty.kind not in ok_kinds:
                checker.ctx.error("E1010", arg.span, f"{env}.{method} takes one {kind_wanted} per agent, not {ty}",
                                  hint=None if ty.per_agent else f"e.g. an ask's output or a state field: {pop or 'people'}.answer")
            elif pop and ty.pop and ty.pop != pop:
                checker.ctx.error("E1010", arg.span, f"{env}.{method} takes one value per `{pop}` agent; "
                                  f"this is one per `{ty.pop}` agent", hint=f"{env} is over `{pop}`")
        else:
            want_ty = want if isinstance(want, Ty) else Ty(want)
            if ty.per_agent:
                checker.ctx.error("E1010", arg.span, f"{env}.{method} takes one {describe(want_ty)} for everyone, not {describe(ty)}",
                                  hint="aggregate it first, e.g. mean(players.x)")
            elif ty.kind != "any" and not assignable(want_ty, ty):
                checker.ctx.error("E1010", arg.span, f"{env}.{method} takes {describe(want_ty)}, not {describe(ty)}")
        irs.append(ir)
    ir = {"method": method, "env": env, "args": irs}
    if per_agent and checker.scope.kind != "agent":
        checker.ctx.error("E1010", e.span, f"{env}.{method}() is one value per agent, not one value here",
                          hint=f"use it in a prompt, a `where` or a state update ({pop or 'people'}.x = {env}.{method}()), "
                          "then aggregate the field")
        return ANY, {"lit": None}
    if per_agent:
        if kind == "python" and checker.scope.kind == "agent" and pop and checker.scope.pop != pop:
            checker.ctx.error("E1010", e.span, f"{env}.{method}() is one value per `{pop}` agent; "
                              f"here the agents are `{checker.scope.pop}`")
            return ANY, {"lit": None}
        return (result.column(checker.scope.pop) if checker.scope.kind == "agent" else result), ir
    return result, ir


__all__ = ["KINDS", "GENERATORS", "METHODS", "STATEMENTS", "lower_kind", "method_type", "methods_of", "Ty"]
