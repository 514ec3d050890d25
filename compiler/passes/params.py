"""Pass 2, params: each `param NAME: type = default`, with `--set NAME=VALUE` overrides applied.

Reads: ctx.scenario, ctx.overrides. Adds: ctx.params (name -> (value, Ty)).
"""
from __future__ import annotations

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean
from populace.dsl.parser import parse_text
from populace.dsl.build import build_expression

from ..context import Context, Quiet
from ..expressions import Checker, Scope
from ..plan.evaluate import EvalError, evaluate, is_constant
from ..types import Ty, assignable, describe, type_of_value
from ..values import constant, in_range, output_type


def resolve_params(ctx: Context) -> None:
    """Evaluate params in order, apply --set overrides, check their types."""
    params = ctx.scenario.params if ctx.scenario else ()
    seen = {}
    for param in params:
        if param.name in seen:
            ctx.error("E1001", param.name_span, f"param `{param.name}` is declared twice")
            continue
        seen[param.name] = param
        ty, value, ok = constant(ctx, param.default, f"param `{param.name}`")
        if param.type is not None:
            declared = output_type(ctx, param.type)
            if ok and not _fits(declared, value):
                if declared.kind == "enum":
                    ctx.error("E1010", param.default.span, f"{value!r} is not one of {describe(declared)}",
                              hint=did_you_mean(str(value), [str(v) for v in declared.values]))
                else:
                    ctx.error("E1010", param.default.span,
                              f"the default of `{param.name}` is {describe(ty)}, not {describe(declared)}")
                ok = False
            ty = declared
        if ok and not in_range(value, ty):
            ctx.error("E1010", param.default.span, f"{value!r} is outside {describe(ty)}")
        if isinstance(value, int) and not isinstance(value, bool) and ty.kind == "float":
            value = float(value)
        ctx.params[param.name] = (value, ty.scalar())
    if ctx.overrides:
        # Each override is line i of a pseudo-file `--set`, so its diagnostics show it with a caret.
        ctx.reporter.sources["--set"] = "\n".join(ctx.overrides)
    for line, item in enumerate(ctx.overrides, start=1):
        _override(ctx, item, line)


def _override(ctx: Context, item: str, line: int) -> None:
    def at(start: int, end: int) -> n.Span:
        return n.Span(file="--set", line=line, column=start + 1, end_line=line, end_column=max(end, start + 1) + 1)

    if "=" not in item:
        ctx.error("E1021", at(0, len(item)), f"`--set {item}` needs NAME=VALUE", hint="e.g. --set players=1000")
        return
    name, text = item.split("=", 1)
    name_at, value_at = at(0, len(name)), at(len(name) + 1, len(item))
    name = name.strip()
    if name.startswith("param."):
        name = name[len("param."):]
    if name not in ctx.params:
        ctx.error("E1021", name_at, f"`--set {name}`: no param `{name}` in the scenario", label="not a param",
                  hint=did_you_mean(name, ctx.params) or f"params: {', '.join(ctx.params) or 'none'}")
        return
    _, ty = ctx.params[name]
    tree, diagnostics = parse_text(text.strip(), "--set", start="expr")
    value = None
    if tree is None:
        if ty.kind in ("str", "enum", "any"):
            value = text  # an unquoted string is what a shell user writes
        else:
            ctx.error("E1021", value_at, f"`--set {item}`: `{text}` is not a value", hint="numbers as 1000 or 0.5, text in quotes")
            return
    else:
        expr = build_expression(tree, "--set")
        vty, ir = Checker(Quiet(ctx), Scope("constant")).expr(expr)
        if not is_constant(ir) or (vty.kind == "any" and ir == {"lit": None}):
            if ty.kind in ("str", "enum") and isinstance(expr, n.Name):
                value = text.strip()
            else:
                ctx.error("E1021", value_at, f"`--set {item}`: param `{name}` is {describe(ty)}; `{text}` is not one",
                          label=f"not {describe(ty)}", hint="numbers as 1000 or 0.5, text in quotes")
                return
        else:
            try:
                value = evaluate(ir)
            except EvalError as err:
                ctx.error("E1021", value_at, f"`--set {item}`: {err.message}")
                return
    if ty.kind in ("str", "enum") and not isinstance(value, str) and text.strip() in ("none", "true", "false"):
        value = text.strip()  # `--set mode=none` means the word: a str param has no other reading of it
    vty = type_of_value(value)
    if not _fits(ty, value) or not in_range(value, ty):
        shown = "none" if value is None else f"{describe(vty)} {value!r}"
        ctx.error("E1021", value_at, f"`--set {item}`: param `{name}` is {describe(ty)}, not {shown}",
                  label=f"not {describe(ty)}")
        return
    if ty.kind == "float" and isinstance(value, int):
        value = float(value)
    ctx.params[name] = (value, ty)


def _fits(declared: Ty, value) -> bool:
    """Can this constant be a value of the declared type? An enum takes exactly its values."""
    if declared.kind == "enum":
        return value in declared.values
    return assignable(declared, type_of_value(value))
