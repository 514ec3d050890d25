"""Pass 9, environments: each environment's kind, parameters and fields.

Reads: ctx.decls["environment"], ctx.populations, ctx.extension_kinds. Adds: ctx.environments
(the plan's `environments`, lowered by compiler/kinds.py) and ctx.env_fields.
"""
from __future__ import annotations

from ..context import Context, span_json
from ..kinds import lower_kind
from ..types import STR, assignable, describe, list_of, to_json, type_of_value
from ..values import constant, output_type


def check_environments(ctx: Context) -> None:
    """Each environment's kind and parameters, and its fields' initial values and types."""
    for name, decl in ctx.decls["environment"].items():
        kind = lower_kind(ctx, decl)
        fields, types = {}, {}
        for f in decl.fields:
            if f.name in fields:
                ctx.error("E1001", f.name_span, f"field `{f.name}` is declared twice")
                continue
            if f.name.startswith("_"):
                ctx.error("E1035", f.name_span, "names starting with `_` are private")
            ty, value, ok = constant(ctx, f.value, f"the initial value of `{f.name}`")
            if f.type is not None:
                declared = output_type(ctx, f.type)
                if ok and not assignable(declared, type_of_value(value)):
                    ctx.error("E1010", f.value.span, f"`{f.name}` is {describe(declared)}, but starts as {describe(ty)}")
                ty = declared
            if ok and ty.kind == "float" and isinstance(value, int):
                value = float(value)
            types[f.name] = ty.scalar()
            fields[f.name] = {"type": to_json(ty.scalar()), "init": value if ok else None}
        ctx.environments[name] = dict(kind, name=name, fields=fields, span=span_json(decl.span))
        ctx.env_fields[name] = types
    for name, info in ctx.environments.items():
        if info["kind"] == "chatroom" and "posts" not in ctx.env_fields[name]:
            ctx.env_fields[name]["posts"] = list_of(STR)
