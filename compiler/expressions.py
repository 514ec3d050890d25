"""Type-check an expression and lower it to the plan's expression JSON, in one walk.

In: a dsl expression node and a Scope (which names exist where: constants, persona fields, the
driver's variables and environments, one agent's own values). Out: (Ty, plan expression), with
diagnostics reported on the Context. On an error the result is (ANY, {"lit": None}) so checking
goes on and the user sees every error at once.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field, replace

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from .context import Context, Quiet
from .plan.evaluate import FUNCTIONS
from .types import ANY, BOOL, FLOAT, INT, NONE, NUMERIC, STR, Ty, describe, list_of, unify, unify_all

AGGREGATES = ("mean", "median", "sum", "count", "min", "max", "quantile", "histogram", "share", "std", "argmin",
              "argmax")
SCALAR_FUNCTIONS = tuple(FUNCTIONS) + ("random", "choice")
BUILTIN_FIELDS = ("id", "kind")  # every agent has them: its index 0..N-1 and its agent declaration's name
BAD = (ANY, {"lit": None})

_FN_ARITY = {"round": (1, 2), "abs": (1, 1), "floor": (1, 1), "ceil": (1, 1), "sqrt": (1, 1), "log": (1, 1),
             "exp": (1, 1), "clamp": (3, 3), "len": (1, 1), "str": (1, 1), "int": (1, 1), "float": (1, 1),
             "join": (1, 2), "last": (1, 2), "random": (0, 0), "min": (1, 99), "max": (1, 99), "fixed": (1, 2),
             "percent": (1, 2), "argmin": (1, 1), "argmax": (1, 1), "choice": (1, 2)}


@dataclass
class Scope:
    """Where an expression is evaluated, and the names visible there."""

    kind: str  # constant | persona | driver | agent
    pop: str | None = None  # agent scope: the population whose agent this is
    persona: str | None = None  # persona scope: the persona being declared
    variables: dict[str, Ty] = field(default_factory=dict)  # loop variables and lets
    refs: set = field(default_factory=set)  # persona fields referenced (for ordering and cycles)
    edges: bool = False  # inside a neighbour aggregate: `self.x` is the agent's own, tagged for the runtime

    def with_vars(self, **more: Ty) -> "Scope":
        return Scope(self.kind, self.pop, self.persona, {**self.variables, **more}, self.refs, self.edges)


class Checker:
    def __init__(self, ctx: Context, scope: Scope):
        self.ctx = ctx
        self.scope = scope

    # ---------------------------------------------------------------- entry points
    def value(self, e: n.Expr, what: str = "this") -> tuple[Ty, dict]:
        """An expression that must be one value (not one per agent) in driver scope."""
        ty, ir = self.expr(e)
        if ty.per_agent and self.scope.kind in ("driver", "constant"):
            self.per_agent_error(e, ty)
            return BAD
        return ty, ir

    def per_agent_error(self, e: n.Expr, ty: Ty) -> None:
        text = _source(e)
        example = f"share({text})" if ty.kind == "bool" else f"mean({text})" if ty.kind in NUMERIC else f"share({text} == ...)"
        self.ctx.error("E1011", e.span, f"`{text}` has one value per agent, but one value is needed here",
                       label="one value per agent", hint=f"aggregate it, e.g. {example}")

    def condition(self, e: n.Expr) -> dict:
        ty, ir = self.expr(e)
        if ty.per_agent and self.scope.kind == "driver":
            self.per_agent_error(e, ty)
        elif ty.kind not in ("bool", "any"):
            self.ctx.error("E1032", e.span, f"a condition must be true or false, not {describe(ty)}",
                           label=f"this is {describe(ty)}", hint="compare it, e.g. `x > 0`")
        return ir

    # ---------------------------------------------------------------- dispatch
    def expr(self, e: n.Expr) -> tuple[Ty, dict]:
        method = getattr(self, "e_" + type(e).__name__, None)
        if method is None:  # every Expr subclass has a method; this guards new node kinds
            self.ctx.error("E1002", e.span, "this expression is not supported here")
            return BAD
        return method(e)

    def e_Literal(self, e: n.Literal):
        kinds = {"int": INT, "float": FLOAT, "percent": FLOAT, "duration": FLOAT, "usd": FLOAT, "str": STR, "bool": BOOL,
                 "none": NONE}
        if isinstance(e.value, (int, float)) and not isinstance(e.value, bool) and \
                not (math.isfinite(e.value) if isinstance(e.value, float) else -2**63 <= e.value < 2**63):
            # plan JSON has no infinity, and the runtime's columns hold 64-bit numbers
            self.ctx.error("E1010", e.span, "this number is too large", hint="numbers are finite and below 2**63")
            return BAD
        return kinds[e.kind], {"lit": e.value}

    def e_Template(self, e: n.Template):
        parts = []
        per_agent, pop = False, None
        for p in e.parts:
            if isinstance(p, str):
                parts.append(p)
                continue
            ty, ir = self.expr(p)
            if ty.per_agent and ty.pop and ty.pop.startswith("group:"):
                self.ctx.error("E1037", p.span, f"`{_source(p)}` has one value per member of the agent's group",
                               hint=f"aggregate it, e.g. sum({_source(p)}) or mean({_source(p)})")
                continue
            if ty.per_agent:
                if self.scope.kind in ("driver", "constant"):
                    self.per_agent_error(p, ty)
                    continue
                per_agent, pop = True, ty.pop
            parts.append(ir)
        return Ty("str", per_agent=per_agent, pop=pop), {"template": parts}

    def e_Piped(self, e: n.Piped):
        """`x | round(2)` is round(x, 2): a template's filter, written after the value."""
        call = n.Call(func=n.Name(id=e.name, span=e.name_span), args=(n.Arg(value=e.value, span=e.value.span), *e.args),
                      span=e.span)
        return self.e_Call(call)

    def e_Filtered(self, e: n.Filtered):
        self.ctx.error("E1046", e.where.span, "`where` here filters nothing: it belongs inside an aggregate",
                       hint=f"e.g. mean({_source(e.value)} where {_source(e.where)}), or count(POP where ...)")
        return BAD

    def e_ListLit(self, e: n.ListLit):
        checked = [self.expr(i) for i in e.items]
        if any(t.per_agent for t, _ in checked):
            self.ctx.error("E1010", e.span, "a list cannot hold per-agent values", hint="aggregate them first")
            return BAD
        return list_of(unify_all([t for t, _ in checked]) if checked else ANY), {"list": [ir for _, ir in checked]}

    def e_RecordLit(self, e: n.RecordLit):
        seen, fields, irs = set(), [], {}
        for key, value in e.fields:
            if key in seen:
                self.ctx.error("E1001", value.span, f"field `{key}` is given twice in this record")
            seen.add(key)
            ty, ir = self.expr(value)
            fields.append((key, ty.scalar()))
            irs[key] = ir
        return Ty("record", fields=tuple(fields)), {"record": irs}

    def e_IfExp(self, e: n.IfExp):
        tt, test = self.expr(e.test)
        if tt.kind not in ("bool", "any"):
            self.ctx.error("E1032", e.test.span, f"a condition must be true or false, not {describe(tt)}")
        t1, then = self.expr(e.then)
        t2, orelse = self.expr(e.orelse)
        ty = unify(t1, t2)
        if ty is None:
            self.ctx.error("E1010", e.span, f"the two branches give {describe(t1)} and {describe(t2)}",
                           hint="make both branches the same type")
            return BAD
        per_agent = t1.per_agent or t2.per_agent or tt.per_agent
        pop = t1.pop or t2.pop or tt.pop
        return (ty.column(pop) if per_agent else ty), {"if": test, "then": then, "else": orelse}

    def e_UnaryOp(self, e: n.UnaryOp):
        ty, ir = self.expr(e.operand)
        if e.op == "not":
            if ty.kind not in ("bool", "any"):
                self.ctx.error("E1010", e.span, f"`not` needs true or false, not {describe(ty)}")
            return Ty("bool", per_agent=ty.per_agent, pop=ty.pop), {"op": "not", "args": [ir]}
        if ty.kind not in NUMERIC and ty.kind != "any":
            self.ctx.error("E1010", e.span, f"`-` needs a number, not {describe(ty)}")
            return BAD
        return Ty(ty.kind, per_agent=ty.per_agent, pop=ty.pop), {"op": "neg", "args": [ir]}

    def e_BinOp(self, e: n.BinOp):
        lt, left = self.expr(e.left)
        rt, right = self.expr(e.right)
        if lt.per_agent and rt.per_agent and lt.pop != rt.pop:
            self.ctx.error("E1010", e.span, f"`{e.op}` combines values of `{lt.pop}` and `{rt.pop}` agent by agent",
                           hint="aggregate one side first, e.g. mean(...)")
            return BAD
        per_agent = lt.per_agent or rt.per_agent
        pop = lt.pop or rt.pop
        ir = {"op": e.op, "args": [left, right]}
        result = self._binop_type(e, lt, rt)
        if result is None:
            return BAD
        return (result.column(pop) if per_agent else result), ir

    def _binop_type(self, e: n.BinOp, lt: Ty, rt: Ty) -> Ty | None:
        op, a, b = e.op, lt.scalar(), rt.scalar()
        if "any" in (a.kind, b.kind):
            return BOOL if op in ("==", "!=", "<", "<=", ">", ">=", "and", "or", "in", "not in") else ANY
        if op in ("and", "or"):
            if a.kind != "bool" or b.kind != "bool":
                bad = e.left if a.kind != "bool" else e.right
                self.ctx.error("E1010", bad.span, f"`{op}` needs true or false on both sides, not {describe(a if a.kind != 'bool' else b)}")
                return None
            return BOOL
        if op in ("==", "!="):
            if unify(a, b) is None:
                self.ctx.error("E1010", e.span, f"comparing {describe(a)} with {describe(b)} is always {op == '!='}",
                               hint="compare values of the same type")
                return None
            self._check_enum_literal(a, e.right)
            self._check_enum_literal(b, e.left)
            return BOOL
        if op in ("<", "<=", ">", ">="):
            if not ((a.kind in NUMERIC and b.kind in NUMERIC) or (a.kind == b.kind == "str")):
                hint = ("true/false has no order: use it as it is (count(players.flag), players.flag and ...) or "
                        "compare it with ==") if "bool" in (a.kind, b.kind) else ""
                self.ctx.error("E1010", e.span, f"`{op}` cannot order {describe(a)} and {describe(b)}", hint=hint)
                return None
            return BOOL
        if op in ("in", "not in"):
            if b.kind != "list" and b.kind != "str":
                self.ctx.error("E1010", e.right.span, f"`{op}` needs a list on its right, not {describe(b)}")
                return None
            return BOOL
        if op == "+" and a.kind in ("str", "enum") and b.kind in ("str", "enum"):
            return STR
        if op == "+" and a.kind == "list":
            item = unify(a.item or ANY, b.item or ANY) if b.kind == "list" else unify(a.item or ANY, b)
            if item is None:
                self.ctx.error("E1010", e.span, f"cannot add {describe(b)} to {describe(a)}")
                return None
            return list_of(item)
        # true counts 1 and false 0 in arithmetic: `3 * players.cooperate` (a bool is a whole number here)
        ka, kb = ("int" if k == "bool" else k for k in (a.kind, b.kind))
        if ka in NUMERIC and kb in NUMERIC:
            if op == "/":
                return FLOAT
            return INT if ka == kb == "int" else FLOAT
        self.ctx.error("E1010", e.span, f"`{op}` cannot combine {describe(a)} and {describe(b)}",
                       label=f"{describe(a)} {op} {describe(b)}",
                       hint="arithmetic needs numbers" + ("; use str(x) to put a number in text" if "str" in (a.kind, b.kind) else ""))
        return None

    def _check_enum_literal(self, ty: Ty, other: n.Expr) -> None:
        if ty.kind == "enum" and isinstance(other, n.Literal) and other.value not in ty.values:
            values = ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in ty.values)
            hint = did_you_mean(str(other.value), [str(v) for v in ty.values]) or f"the values are {values}"
            self.ctx.error("E1010", other.span, f"{other.text} is not one of the values of {describe(ty)}",
                           label="never equal", hint=hint)

    # ---------------------------------------------------------------- names
    def e_Name(self, e: n.Name):
        name = e.id
        scope = self.scope
        if name.startswith("_"):
            return self._private(e, name)
        if name in scope.variables:
            return scope.variables[name], {"var": name}
        if scope.kind == "persona":
            fields = self.ctx.persona_fields.get(scope.persona, {})
            if name in fields:
                scope.refs.add(name)
                return fields[name], {"col": name, "src": "persona"}
        hint = self._name_hint(name)
        what = {"param": "`param` needs a name: param.NAME", "persona": "`persona` needs a field: persona.NAME",
                "self": "`self` needs a field: self.NAME"}.get(name)
        if what:
            self.ctx.error("E1002", e.span, what)
            return BAD
        if name in self.ctx.populations or name in self.ctx.environments or name in self.ctx.groups:
            self.ctx.error("E1002", e.span, f"`{name}` needs a field here, e.g. {name}.NAME",
                           hint=hint if hint.startswith("did") else "")
            return BAD
        self.ctx.error("E1002", e.span, f"unknown name `{name}`", label="not declared in this scenario",
                       hint=hint or self._scope_hint())
        return BAD

    def _scope_hint(self) -> str:
        kind = self.scope.kind
        if kind == "persona":
            return "inside a persona, other fields are written by name; params as param.NAME"
        if kind == "constant":
            return "only literals and param.NAME are known before the run starts"
        if kind == "agent":
            return "an agent sees persona.NAME, self.NAME, environment fields, params and loop variables"
        return "names are params (param.NAME), environments (ENV.FIELD), populations (POP.FIELD), loop variables and lets"

    def _name_hint(self, name: str) -> str:
        candidates = list(self.scope.variables) + list(self.ctx.populations) + list(self.ctx.environments)
        if self.scope.kind == "persona":
            candidates += list(self.ctx.persona_fields.get(self.scope.persona, {}))
        if self.scope.kind == "agent":
            fields = self.ctx.population_fields.get(self.scope.pop or "", {})
            import difflib

            near = name if name in fields else next(iter(difflib.get_close_matches(name, list(fields), n=1)), None)
            if near in fields:  # a bare (or misspelt) field name: say how to write it, qualified
                prefix = "persona" if fields[near].source == "persona" else "self"
                return f"did you mean `{prefix}.{near}`? an agent's fields are written {prefix}.NAME"
            candidates += ["persona", "self"]
        return did_you_mean(name, candidates)

    def _private(self, e, name):
        self.ctx.error("E1035", e.span, f"`{name}` is not accessible", label="names starting with `_` are private",
                       hint="templates and expressions reach only declared fields")
        return BAD

    def e_Attr(self, e: n.Attr):
        if e.attr.startswith("_"):
            return self._private(e, e.attr)
        base = e.value
        if isinstance(base, n.Name) and base.id not in self.scope.variables:
            name = base.id
            if name == _NEIGHBOUR:  # a neighbour's field inside a neighbour aggregate
                return self._agent_field(e, self.neighbour_pop, ("state", "output", "persona"))
            if name == "param":
                return self._param(e)
            if name in self.ctx.environments:
                return self._env_field(e, name)
            if name == "persona" and self.scope.kind == "agent":
                ty, ir = self._agent_field(e, self.scope.pop, ("persona",))
                if self.scope.edges and "col" in ir:
                    ir = dict(ir, self=True)
                return ty, ir
            if name == "self" and self.scope.kind == "agent":
                ty, ir = self._agent_field(e, self.scope.pop, ("state", "output", "persona"))
                if self.scope.edges and "col" in ir:
                    ir = dict(ir, self=True)  # inside a neighbour aggregate: the agent's own value, not theirs
                return ty, ir
            if name in ("persona", "self") and self.scope.kind != "agent":
                self.ctx.error("E1002", e.span, f"`{name}.{e.attr}` belongs to one agent, and no agent is speaking here",
                               hint="persona and self are seen in ask, tell ... from, system prompts and agent updates")
                return BAD
            if name in self.ctx.populations:
                if self.scope.kind in ("constant", "persona"):
                    self.ctx.error("E1002", e.span, f"`{name}` has no values yet here",
                                   hint="population fields exist only in the workflow")
                    return BAD
                return self._agent_field(e, name, ("state", "output", "persona"))
            if name in self.ctx.groups:
                return self._group_field(e, name)
        ty, ir = self.expr(base)
        if ty.kind == "any":
            return ANY.column(ty.pop) if ty.per_agent else ANY, {"get": ir, "field": e.attr}
        if ty.kind != "record":
            self.ctx.error("E1009", e.span, f"{describe(ty)} has no field `{e.attr}`")
            return BAD
        fields = dict(ty.fields)
        if e.attr not in fields:
            self.ctx.error("E1009", e.span, f"no field `{e.attr}` in {describe(ty)}",
                           hint=did_you_mean(e.attr, fields))
            return BAD
        ft = fields[e.attr]
        return (ft.column(ty.pop) if ty.per_agent else ft), {"get": ir, "field": e.attr}

    def _param(self, e: n.Attr):
        if e.attr not in self.ctx.params and self.ctx.scenario is None:
            # A module checked on its own: its params are those of the scenario that imports it, which
            # checks them in full. Alone the value is unknown, so the use is left out (and `run` refuses).
            self.ctx.warning("W1003", e.span, f"`param.{e.attr}` comes from the scenario that imports this file",
                             label="unknown on its own",
                             hint="checked with its value when the importing scenario is checked or compiled")
            return BAD
        if e.attr not in self.ctx.params:
            self.ctx.error("E1008", e.span, f"unknown param `{e.attr}`", label="not declared in the scenario block",
                           hint=did_you_mean(e.attr, self.ctx.params) or "declare it: param NAME = DEFAULT")
            return BAD
        value, ty = self.ctx.params[e.attr]
        return ty, {"lit": value}

    def _env_field(self, e: n.Attr, env: str):
        if self.scope.kind in ("constant", "persona"):
            self.ctx.error("E1007", e.span, f"environment `{env}` is not available here",
                           hint="environment values exist only in the workflow and in prompts")
            return BAD
        fields = self.ctx.env_fields.get(env, {})
        if e.attr not in fields:
            self.ctx.error("E1007", e.span, f"environment `{env}` has no field `{e.attr}`",
                           hint=did_you_mean(e.attr, fields) or f"its fields: {', '.join(sorted(fields)) or 'none'}")
            return BAD
        return fields[e.attr], {"env": env, "field": e.attr}

    def _agent_field(self, e: n.Attr, pop: str, sources: tuple[str, ...]):
        fields = self.ctx.population_fields.get(pop, {})
        info = fields.get(e.attr)
        if info is None and e.attr in BUILTIN_FIELDS and "state" in sources:
            return self._builtin(e.attr, pop)
        if info is None and e.attr in ("persona", "self") and not pop.startswith("agent:"):
            # `residents.persona.occupation`: the agent's fields are written directly on it
            self.ctx.error("E1009", e.span, f"`{pop}.{e.attr}` is not a field: an agent's fields are written "
                           f"`{pop}.NAME` (in an agent's own view also `persona.NAME` and `self.NAME`)",
                           hint=f"e.g. {pop}.{next(iter(fields), 'NAME')}")
            return BAD
        if info is None or info.source not in sources:
            candidates = [k for k, v in fields.items() if v.source in sources]
            owner = "persona" if sources == ("persona",) else f"`{pop}`"
            self.ctx.error("E1009", e.span, f"{owner} has no field `{e.attr}`",
                           label="not a persona field, state field or ask output" if owner != "persona" else "not a persona field",
                           hint=did_you_mean(e.attr, candidates) or (f"known: {', '.join(sorted(candidates))}" if candidates else ""))
            return BAD
        if self.scope.kind == "agent" and pop != self.scope.pop:
            # Another population's column seen from an agent: only through an aggregate.
            return info.ty.column(pop), {"col": e.attr, "pop": pop, "src": info.source}
        return info.ty.column(pop), {"col": e.attr, "pop": pop, "src": info.source}

    def _builtin(self, name: str, pop: str | None):
        """`self.id` (0..N-1 in the population, stable) and `self.kind` (the agent declaration's name)."""
        ir = {"col": name, "src": "builtin", **({"pop": pop} if pop and not pop.startswith("agent:") else {})}
        if name == "id":
            return INT.column(pop), ir
        if pop and pop.startswith("agent:"):
            kinds = (pop[6:],)
        else:
            kinds = tuple(dict.fromkeys(part["agent"] for part in self.ctx.populations.get(pop, {}).get("mixture", ())))
        return (Ty("enum", values=kinds) if kinds else STR).column(pop), ir

    def _group_field(self, e: n.Attr, group: str):
        if self.scope.kind != "agent":
            self.ctx.error("E1037", e.span, f"group set `{group}` is per agent: use it in prompts and agent updates",
                           hint=f"e.g. sum({group}.{e.attr}) in a prompt gives the total of the agent's own group")
            return BAD
        g = self.ctx.groups[group]
        ty, ir = self._agent_field(e, g["population"], ("state", "output", "persona"))
        if ir.get("lit", 0) is None:
            return BAD
        ir = dict(ir, via={"group": group})
        return ty.column("group:" + group), ir

    # ---------------------------------------------------------------- calls and indexing
    def e_Index(self, e: n.Index):
        ty, ir = self.expr(e.value)
        it, iir = self.expr(e.index)
        if ty.kind == "list":
            if it.kind not in ("int", "any"):
                self.ctx.error("E1010", e.index.span, f"a list index must be a whole number, not {describe(it)}")
            item = ty.item or ANY
            return (item.column(ty.pop) if ty.per_agent else item), {"index": [ir, iir]}
        if ty.kind == "any":
            return ANY, {"index": [ir, iir]}
        self.ctx.error("E1010", e.span, f"{describe(ty)} cannot be indexed")
        return BAD

    def e_Call(self, e: n.Call):
        if not isinstance(e.func, n.Name):
            if isinstance(e.func, n.Attr) and isinstance(e.func.value, n.Name) and e.func.value.id in self.ctx.environments:
                return self._env_method(e)
            self.ctx.error("E1013", e.func.span, "only named functions can be called",
                           hint="functions: " + ", ".join(AGGREGATES + ("round", "min", "max", "clamp")))
            return BAD
        name = e.func.id
        if name in AGGREGATES and e.args and self._is_column_arg(e.args[0].value):
            return self._aggregate(e, name)
        if name == "neighbors":
            self.ctx.error("E1037", e.span, "neighbors(...) is a set of agents: aggregate a field of it",
                           hint="e.g. share(neighbors(net).believes), count(neighbors(net) where neighbors(net).x > 0)")
            return BAD
        if name in self.ctx.environments:
            self.ctx.error("E1013", e.func.span, f"`{name}` is an environment, not a function")
            return BAD
        if name in AGGREGATES and name not in SCALAR_FUNCTIONS:
            # e.g. mean(3): aggregates take a population's field. Check the argument first, so an
            # error inside it (an unknown field, a group used outside an agent) is the one reported.
            if e.args and self.expr(e.args[0].value)[0].kind == "any":
                return BAD
            self.ctx.error("E1012", e.span, f"`{name}` aggregates a population's field, one value per agent",
                           hint=f"e.g. {name}(players.guess)")
            return BAD
        if name not in SCALAR_FUNCTIONS:
            self.ctx.error("E1013", e.func.span, f"unknown function `{name}`",
                           hint=did_you_mean(name, SCALAR_FUNCTIONS + AGGREGATES) or
                           "functions: " + ", ".join(sorted(set(SCALAR_FUNCTIONS + AGGREGATES))))
            return BAD
        lo, hi = _FN_ARITY.get(name, (0, 99))
        if any(a.name or a.key for a in e.args):
            self.ctx.error("E1014", e.span, f"`{name}` takes no named arguments")
            return BAD
        if not lo <= len(e.args) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}"
            self.ctx.error("E1014", e.span, f"`{name}` takes {want} argument{'s' if hi != 1 else ''}, not {len(e.args)}")
            return BAD
        checked = [self.expr(a.value) for a in e.args]
        per_agent = any(t.per_agent for t, _ in checked)
        pops = {t.pop for t, _ in checked if t.per_agent}
        ir = {"call": name, "args": [i for _, i in checked]}
        if name == "choice":
            if self.scope.kind != "agent":
                self.ctx.error("E1013", e.span, "choice(...) draws for each agent: use it in prompts and agent updates",
                               hint="e.g. players.move = choice([\"a\", \"b\"], [players.wa, players.wb])")
                return BAD
            items = checked[0][0]
            if items.kind != "list" or (len(checked) > 1 and checked[1][0].kind not in ("list", "any")):
                self.ctx.error("E1014", e.span, "choice takes a list of items and, optionally, a list of weights",
                               hint="e.g. choice([\"stay\", \"go\"], [0.7, 0.3]); a weight may differ per agent")
                return BAD
            if len(checked) > 1 and isinstance(e.args[0].value, n.ListLit) and isinstance(e.args[1].value, n.ListLit) \
                    and len(e.args[0].value.items) != len(e.args[1].value.items):
                self.ctx.error("E1014", e.args[1].span, f"{len(e.args[0].value.items)} items but "
                               f"{len(e.args[1].value.items)} weights", hint="give one weight per item")
                return BAD
            words = e.args[0].value.items if isinstance(e.args[0].value, n.ListLit) else ()
            if words and all(isinstance(w, n.Literal) and isinstance(w.value, str) for w in words):
                # choice(["A", "B"]) is one of those words: it fits a state enum("A", "B")
                values = tuple(dict.fromkeys(w.value for w in words))
                return Ty("enum", values=values).column(self.scope.pop), ir
            return (items.item or ANY).column(self.scope.pop), ir
        if name == "random":
            if self.scope.kind in ("constant", "persona"):
                self.ctx.error("E1013", e.span, "random() is for the workflow; use a distribution in a persona",
                               hint="e.g. x ~ uniform(0, 1)")
                return BAD
            return (FLOAT.column(self.scope.pop) if self.scope.kind == "agent" else FLOAT), ir
        ty = self._function_type(e, name, [t for t, _ in checked])
        if ty is None:
            return BAD
        return (ty.column(next(iter(pops))) if per_agent else ty), ir

    def _function_type(self, e: n.Call, name: str, types: list[Ty]) -> Ty | None:
        scal = [t.scalar() for t in types]
        if name in ("round", "floor", "ceil"):
            if scal[0].kind not in NUMERIC + ("any",):
                self.ctx.error("E1014", e.args[0].span, f"`{name}` needs a number, not {describe(scal[0])}")
                return None
            return FLOAT if name == "round" and len(scal) == 2 else INT
        if name in ("abs",):
            return scal[0]
        if name in ("sqrt", "log", "exp", "float"):
            return FLOAT
        if name == "int":
            return INT
        if name in ("str", "join", "fixed", "percent"):
            if name in ("fixed", "percent") and scal[0].kind not in NUMERIC + ("bool", "any", "none"):
                self.ctx.error("E1014", e.args[0].span, f"`{name}` formats a number, not {describe(scal[0])}")
                return None
            return STR
        if name in ("argmin", "argmax"):
            if scal[0].kind not in ("list", "any"):
                self.ctx.error("E1014", e.args[0].span, f"`{name}` of one value: give a list, e.g. {name}([a, b, c]), "
                               f"or a population's field, e.g. {name}(players.x)")
                return None
            return INT
        if name == "len":
            if scal[0].kind not in ("list", "str", "enum", "any"):
                self.ctx.error("E1014", e.args[0].span, f"`len` needs a list or text, not {describe(scal[0])}")
                return None
            return INT
        if name == "last":
            return scal[0] if scal[0].kind == "list" else list_of(ANY)
        if name in ("min", "max", "clamp"):
            if len(scal) == 1:
                return scal[0].item if scal[0].kind == "list" and scal[0].item else ANY
            for arg, t in zip(e.args, scal):
                if t.kind not in NUMERIC + ("any",):
                    self.ctx.error("E1014", arg.span, f"`{name}` takes numbers, not {describe(t)}")
                    return None
            return unify_all(scal)
        return ANY

    def _is_column_arg(self, arg: n.Expr) -> bool:
        """Is this aggregate's argument a per-agent value (so the call aggregates)?"""
        if isinstance(arg, n.Filtered):
            return True
        if isinstance(arg, n.Name) and arg.id in self.ctx.populations and arg.id not in self.scope.variables:
            return True  # count(players): the agents themselves
        probe = Checker(Quiet(self.ctx), self.scope)
        ty, _ = probe.expr(arg)
        return ty.per_agent or (isinstance(arg, n.Attr) and isinstance(arg.value, n.Call)
                                and isinstance(arg.value.func, n.Name) and arg.value.func.id == "neighbors")

    def _aggregate(self, e: n.Call, name: str):
        first = e.args[0].value
        condition = None
        if isinstance(first, n.Filtered):
            first, condition = first.value, first.where
        if name == "count" and condition is not None and isinstance(first, n.Call) and isinstance(first.func, n.Name) \
                and first.func.id == "neighbors":
            # count(neighbors(net) where COND): the neighbours for whom COND holds, i.e. count(COND)
            return self._aggregate(n.Call(func=e.func, args=(n.Arg(value=condition, span=condition.span),),
                                          span=e.span), name)
        via = None
        agents_of = None  # count(players ...): the population itself, no field
        if isinstance(first, n.Name) and first.id in self.ctx.populations and first.id not in self.scope.variables:
            if name != "count":
                self.ctx.error("E1012", first.span, f"`{name}` needs a field of `{first.id}`, one value per agent",
                               hint=f"e.g. {name}({first.id}.x); count({first.id} where ...) counts agents")
                return BAD
            agents_of = first.id
            ty, ir = BOOL.column(first.id), {"lit": True}
        elif (condition is not None and self._mentions_neighbors(condition)) or (self._mentions_neighbors(first) and not (
                isinstance(first, n.Attr) and isinstance(first.value, n.Call) and isinstance(first.value.func, n.Name)
                and first.value.func.id == "neighbors")):
            return self._neighbour_aggregate(e, name, first, condition)
        elif isinstance(first, n.Attr) and isinstance(first.value, n.Call) and isinstance(first.value.func, n.Name) \
                and first.value.func.id == "neighbors":
            net_ty = self._neighbors(first.value)
            if net_ty is None:
                return BAD
            net, pop = net_ty
            ty, ir = self._agent_field(n.Attr(value=n.Name(id=pop, span=first.span), attr=first.attr, span=first.span),
                                       pop, ("state", "output", "persona"))
            via = {"neighbors": net}
            ir = dict(ir, via=via)
        else:
            ty, ir = self.expr(first)
            if ty.pop and ty.pop.startswith("group:"):
                via = {"group": ty.pop[6:]}
        if ty.kind == "any" and not ty.per_agent:
            return BAD
        where = None
        if condition is not None:
            where = self._filter(condition, ty, via, agents_of or self._pop_of(ty))
            if where is None:
                return BAD
        if name == "count" and ty.scalar().kind == "bool" and agents_of is None:
            # count(x > 0) counts the agents for whom it holds (not the present values): say it once, here
            where = ir if where is None else {"op": "and", "args": [ir, where]}
            ir = {"lit": True}
        params: dict = {}
        elem = ty.scalar()
        if name in ("mean", "median", "sum", "quantile", "std", "histogram") and elem.kind not in NUMERIC + ("bool", "any"):
            self.ctx.error("E1012", first.span, f"`{name}` needs numbers, but `{_source(first)}` is {describe(elem)}",
                           hint="share(x == value) gives the fraction of agents with a given value" if elem.kind in ("enum", "str") else "")
            return BAD
        if name == "share" and elem.kind not in ("bool", "any"):
            self.ctx.error("E1012", first.span, f"`share` needs a true/false value per agent, not {describe(elem)}",
                           hint=f"e.g. share({_source(first)} == ...)")
            return BAD
        for arg in e.args[1:]:
            if arg.name is None and name == "quantile" and "q" not in params:
                params["q"] = self._const_number(arg.value, "the quantile")
            elif (name == "histogram" and arg.name in ("bins", "low", "high")) or (name == "quantile" and arg.name == "q"):
                params[arg.name] = self._const_number(arg.value, arg.name)
            else:
                self.ctx.error("E1014", arg.span, f"`{name}` does not take this argument",
                               hint="histogram(x, bins = 10, low = 0, high = 100); quantile(x, 0.9)")
        if name == "quantile" and "q" not in params:
            self.ctx.error("E1014", e.span, "quantile needs the quantile, e.g. quantile(players.guess, 0.9)")
            return BAD
        if name == "histogram":
            params.setdefault("bins", 10)
            if elem.low is not None and "low" not in params:
                params["low"] = elem.low
            if elem.high is not None and "high" not in params:
                params["high"] = elem.high
        if name in ("argmin", "argmax") and elem.kind not in NUMERIC + ("bool", "any"):
            self.ctx.error("E1012", first.span, f"`{name}` needs numbers, but `{_source(first)}` is {describe(elem)}")
            return BAD
        out = {"mean": FLOAT, "median": FLOAT, "quantile": FLOAT, "std": FLOAT, "share": FLOAT, "count": INT,
               "argmin": INT, "argmax": INT,
               "sum": FLOAT if elem.kind == "float" else INT, "min": elem, "max": elem,
               "histogram": Ty("record", fields=(("counts", list_of(INT)), ("edges", list_of(FLOAT))))}[name]
        if out.kind == "enum":
            out = STR
        if name in ("sum", "min", "max") and elem.kind in ("int", "bool"):
            params["int"] = True  # the runtime keeps whole-number results whole
        agg = {"agg": name, "arg": ir, "pop": agents_of or self._pop_of(ty), "params": params}
        if where is not None:
            agg["where"] = where
        if via and name in ("argmin", "argmax"):
            self.ctx.error("E1037", e.span, f"`{name}` over a group or neighbours is not supported yet",
                           hint=f"{name}(POP.x) gives the id of the agent with the smallest or largest x")
            return BAD
        if via:
            agg["via"] = via
            if name == "histogram":
                self.ctx.error("E1037", e.span, "a histogram over a group or neighbours is not supported",
                               hint="e.g. median(...) or quantile(..., 0.9) of the agent's group or neighbours")
                return BAD
            if self.scope.kind != "agent":
                self.ctx.error("E1037", e.span, f"`{name}` over a group or neighbours is per agent",
                               hint="use it in a prompt, a `where` or an agent update")
                return BAD
            owner = agg["pop"]
            # (a system prompt's scope is an agent kind, which may be in any population: checked at run start)
            if self.scope.pop and owner and self.scope.pop != owner and not self.scope.pop.startswith("agent:"):
                # The agent looks up its own group or its own row of the network: it must be one of them.
                what = f"group set `{via['group']}`" if "group" in via else f"network `{via['neighbors']}`"
                self.ctx.error("E1037", e.span, f"`{self.scope.pop}` agents are not in {what}, which is over `{owner}`",
                               hint=f"use it where `{owner}` agents speak or are updated")
                return BAD
            return out.column(self.scope.pop), agg
        return out, agg

    def _filter(self, condition: n.Expr, ty: Ty, via, pop: str | None):
        """The plan form of an aggregate's `where`: true or false for each agent aggregated."""
        cty, cir = self.expr(condition)
        if cty.kind not in ("bool", "any"):
            self.ctx.error("E1032", condition.span, f"a filter must be true or false, not {describe(cty)}",
                           hint="compare it, e.g. `players.x > 0`")
            return None
        if cty.per_agent and cty.pop != ty.pop and not (pop and cty.pop == pop):
            self.ctx.error("E1010", condition.span, f"the filter is about `{cty.pop}`, the values about `{ty.pop or pop}`",
                           hint="filter the agents whose values are aggregated")
            return None
        return cir

    @staticmethod
    def _mentions_neighbors(e) -> bool:
        """Does `e` read neighbours' fields anywhere (`neighbors(net).x != self.x`)?"""
        if isinstance(e, n.Call) and isinstance(e.func, n.Name) and e.func.id == "neighbors":
            return True
        if isinstance(e, tuple):
            return any(Checker._mentions_neighbors(v) for v in e)
        if isinstance(e, n.Node):
            return any(Checker._mentions_neighbors(getattr(e, f)) for f in e.__dataclass_fields__ if f != "span")
        return False

    def _neighbour_aggregate(self, e: n.Call, name: str, first: n.Expr, condition: n.Expr | None):
        """An aggregate over each agent's neighbours of an expression that also reads the agent's own
        fields (`share(neighbors(net).x != self.x)`): evaluated per (agent, neighbour) pair."""
        if self.scope.kind != "agent":
            self.ctx.error("E1037", e.span, "neighbors(...) is per agent: use it in prompts, `where` and agent updates")
            return BAD
        nets = set()

        def rewrite(node):
            # neighbors(net).f -> a plain field of the network's population (the neighbour's value)
            if isinstance(node, n.Attr) and isinstance(node.value, n.Call) and isinstance(node.value.func, n.Name) \
                    and node.value.func.id == "neighbors":
                found = self._neighbors(node.value)
                if found is None:
                    raise _Bad
                nets.add(found)
                return n.Attr(value=n.Name(id=_NEIGHBOUR, span=node.span), attr=node.attr, span=node.span)
            if isinstance(node, n.Node):
                changes = {}
                for slot in node.__dataclass_fields__:
                    value = getattr(node, slot)
                    if isinstance(value, n.Node):
                        changes[slot] = rewrite(value)
                    elif isinstance(value, tuple) and value and any(isinstance(v, n.Node) for v in value):
                        changes[slot] = tuple(rewrite(v) if isinstance(v, n.Node) else
                                              tuple(rewrite(x) if isinstance(x, n.Node) else x for x in v)
                                              if isinstance(v, tuple) else v for v in value)
                return replace(node, **changes) if changes else node
            return node

        try:
            arg = rewrite(first)
            cond = rewrite(condition) if condition is not None else None
        except _Bad:
            return BAD
        if len(nets) != 1:
            self.ctx.error("E1037", e.span, "one neighbour aggregate reads one network", hint="aggregate each network apart")
            return BAD
        net, pop = next(iter(nets))
        if self.scope.pop != pop and not (self.scope.pop or "").startswith("agent:"):
            self.ctx.error("E1037", e.span, f"`{self.scope.pop}` agents are not in network `{net}`, which is over `{pop}`")
            return BAD
        inner = Checker(self.ctx, Scope(self.scope.kind, self.scope.pop, self.scope.persona, dict(self.scope.variables),
                                        self.scope.refs, edges=True))
        inner.neighbour_pop = pop
        ty, ir = inner.expr(arg)
        where = None
        if cond is not None:
            cty, where = inner.expr(cond)
            if cty.kind not in ("bool", "any"):
                self.ctx.error("E1032", condition.span, f"a filter must be true or false, not {describe(cty)}")
                return BAD
        if ty.kind == "any":
            return BAD
        elem = ty.scalar()
        if name == "count" and elem.kind == "bool":
            where = ir if where is None else {"op": "and", "args": [ir, where]}
            ir = {"lit": True}
        if name in ("histogram", "argmin", "argmax", "quantile"):
            self.ctx.error("E1037", e.span, f"`{name}` over neighbours is not supported",
                           hint="use mean, sum, count, share, min, max, std or median")
            return BAD
        if name in ("mean", "median", "sum", "std", "min", "max") and elem.kind not in NUMERIC + ("bool", "any"):
            self.ctx.error("E1012", first.span, f"`{name}` needs numbers, but this is {describe(elem)}")
            return BAD
        if name == "share" and elem.kind not in ("bool", "any"):
            self.ctx.error("E1012", first.span, f"`share` needs true or false for each neighbour, not {describe(elem)}")
            return BAD
        params = {"int": True} if name in ("sum", "min", "max") and elem.kind in ("int", "bool") else {}
        out = {"mean": FLOAT, "median": FLOAT, "std": FLOAT, "share": FLOAT, "count": INT,
               "sum": FLOAT if elem.kind == "float" else INT, "min": elem, "max": elem}[name]
        agg = {"agg": name, "arg": ir, "pop": pop, "params": params, "via": {"neighbors": net}}
        if where is not None:
            agg["where"] = where
        return out.column(self.scope.pop), agg

    def _pop_of(self, ty: Ty) -> str | None:
        if ty.pop and ty.pop.startswith("group:"):
            return self.ctx.groups[ty.pop[6:]]["population"]
        return ty.pop

    def _neighbors(self, call: n.Call):
        if self.scope.kind != "agent":
            self.ctx.error("E1037", call.span, "neighbors(...) is per agent: use it in prompts, `where` and agent updates")
            return None
        if len(call.args) != 1 or not isinstance(call.args[0].value, n.Name) \
                or call.args[0].value.id not in self.ctx.environments:
            self.ctx.error("E1014", call.span, "neighbors takes one network or grid environment, e.g. neighbors(net)")
            return None
        env = call.args[0].value.id
        info = self.ctx.environments[env]
        if info["kind"] not in ("network", "grid"):
            self.ctx.error("E1030", call.args[0].span, f"`{env}` is a {info['kind']}, not a network or grid")
            return None
        return env, info["population"]

    def _const_number(self, e: n.Expr, what: str):
        ty, ir = Checker(self.ctx, Scope("constant")).expr(e)
        if ty.kind not in NUMERIC or "lit" not in ir:
            from .plan.evaluate import EvalError, evaluate, is_constant

            if ty.kind in NUMERIC and is_constant(ir):
                try:
                    return evaluate(ir)
                except EvalError:
                    pass
            self.ctx.error("E1014", e.span, f"{what} must be a number known before the run")
            return 0
        return ir["lit"]

    def _env_method(self, e: n.Call, statement: bool = False):
        env = e.func.value.id
        method = e.func.attr
        kind = self.ctx.environments[env]["kind"]
        from .kinds import method_type

        return method_type(self, e, env, kind, method, statement)


_NEIGHBOUR = "neighbors()"  # not a name a user can write: stands for the neighbour in a rewritten argument


class _Bad(Exception):
    pass


def _source(e: n.Expr) -> str:
    """Readable source text of an expression (used to name record items and in messages)."""
    from .text import expression_text

    return expression_text(e)
