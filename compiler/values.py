"""Constants and types written in the source, as the passes need them.

In: syntax nodes (a constant expression, a type annotation) and the Context. Out: Python values,
types (Ty) and plan JSON pieces (a state field), with diagnostics reported on the Context.
"""
from __future__ import annotations

import math

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from .context import Context
from .expressions import Checker, Scope
from .plan.evaluate import EvalError, evaluate, is_constant
from .types import ANY, BOOL, FLOAT, INT, NUMERIC, STR, Ty, list_of, to_json


def constant(ctx: Context, e: n.Expr, what: str):
    """Evaluate an expression that must be known before the run (literals, params, arithmetic)."""
    reported = len(ctx.reporter.diagnostics)
    ty, ir = Checker(ctx, Scope("constant")).expr(e)
    if (ty.kind == "any" and ir == {"lit": None}) or len(ctx.reporter.diagnostics) > reported:
        return ty, None, False  # already reported inside the expression; evaluating it would only repeat that
    if not is_constant(ir):
        ctx.error("E1022", e.span, f"{what} must be known before the run", hint="use literals and param.NAME")
        return ty, None, False
    try:
        value = evaluate(ir)
    except EvalError as err:
        ctx.error("E1022", e.span, f"{what} cannot be computed: {err.message}")
        return ty, None, False
    if not plan_number_ok(value):
        ctx.error("E1022", e.span, f"{what} is too large for a plan", hint="numbers are finite, whole numbers below 2**63")
        return ty, None, False
    return ty, value, True


def plan_number_ok(value) -> bool:
    """Can this constant be written to plan JSON (finite floats, 64-bit whole numbers)?"""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -2**63 <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(plan_number_ok(v) for v in value)
    if isinstance(value, dict):
        return all(plan_number_ok(v) for v in value.values())
    return True


def in_range(value, ty: Ty) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ty.kind != "enum" or value in ty.values
    return (ty.low is None or value >= ty.low) and (ty.high is None or value <= ty.high)


# ------------------------------------------------------------------ types written in the source
def output_type(ctx: Context, t: n.TypeExpr) -> Ty:
    """A TypeExpr (output, state, param, field annotation) to a Ty; reports malformed types."""
    if t.form == "record":
        names = set()
        fields = []
        for name, sub in t.fields:
            if name in names:
                ctx.error("E1017", sub.span, f"record field `{name}` appears twice")
            names.add(name)
            fields.append((name, output_type(ctx, sub)))
        if not fields:
            ctx.error("E1017", t.span, "a record type needs at least one field")
        return Ty("record", fields=tuple(fields))
    if t.form == "generic":
        if t.name != "list":
            ctx.error("E1017", t.span, f"unknown type `{t.name}[...]`", hint="list[T] is the only generic type")
            return ANY
        return list_of(output_type(ctx, t.item))
    if t.form == "call":
        if t.name != "enum":
            ctx.error("E1017", t.span, f"unknown type `{t.name}(...)`", hint='enum("a", "b") lists the allowed values')
            return ANY
        values = []
        for arg in t.args:
            if arg.name or arg.key is not None or not isinstance(arg.value, n.Literal) or arg.value.kind not in ("str", "int"):
                ctx.error("E1017", arg.span, "enum values are strings or whole numbers")
                continue
            if arg.value.value in values:
                ctx.error("E1017", arg.span, f"enum value {arg.value.text} appears twice")
                continue
            values.append(arg.value.value)
        if not t.args:
            ctx.error("E1017", t.span, "an enum needs at least one value", hint='e.g. enum("yes", "no")')
        return Ty("enum", values=tuple(values))
    base = {"int": INT, "float": FLOAT, "bool": BOOL, "str": STR, "list": list_of(ANY)}.get(t.name)
    if base is None:
        ctx.error("E1017", t.span, f"unknown type `{t.name}`",
                  hint=did_you_mean(t.name, ("int", "float", "bool", "str", "enum", "list")) or
                  "types: int, float, bool, str, enum(...), list[T], { field: type }")
        return ANY
    if t.low is None:
        return base
    if base.kind not in NUMERIC:
        ctx.error("E1017", t.span, f"only int and float take a range, not {t.name}")
        return base
    _, low, ok1 = constant(ctx, t.low, "the range's lower end")
    _, high, ok2 = constant(ctx, t.high, "the range's upper end")
    if not (ok1 and ok2):
        return base
    if base.kind == "int" and (not float(low).is_integer() or not float(high).is_integer()):
        ctx.error("E1017", t.span, "an int range needs whole-number ends")
    if low > high:
        ctx.error("E1017", t.span, f"the range {low}..{high} is empty", label="lower end above upper end",
                  hint=f"write {high}..{low}")
    return Ty(base.kind, low=low, high=high)


def state_json(st: dict) -> dict:
    """A state field as the plan holds it: type, start (a constant, or `default_expr`), out_of_range."""
    out = {"type": to_json(st["type"]), "default": st["default"]}
    if st.get("expr") is not None:
        out["default_expr"] = st["expr"]
    if st.get("out_of_range"):
        out["out_of_range"] = st["out_of_range"]
    return out


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
