"""Pass 8, groups: named subsets of a population (`group rich = people where ...`).

Reads: ctx.decls["group"], ctx.populations, ctx.population_fields. Adds: ctx.groups.
"""
from __future__ import annotations

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from ..context import Context, span_json
from ..values import constant


def check_groups(ctx: Context) -> None:
    """`group POP by N as NAME` (random groups of N) or `by persona.FIELD` (one group per value)."""
    for name, decl in ctx.decls["group"].items():
        if decl.population not in ctx.populations:
            ctx.error("E1006", decl.population_span, f"unknown population `{decl.population}`",
                      hint=did_you_mean(decl.population, ctx.populations))
            continue
        pop = ctx.populations[decl.population]
        by = decl.by
        if isinstance(by, n.Attr) and isinstance(by.value, n.Name) and by.value.id == "persona":
            field_info = ctx.population_fields[decl.population].get(by.attr)
            if field_info is None or field_info.source != "persona":
                ctx.error("E1009", by.span, f"`{decl.population}` has no persona field `{by.attr}`",
                          hint=did_you_mean(by.attr, ctx.persona_fields.get(pop["persona"], {})))
                continue
            entry = {"name": name, "population": decl.population, "by_field": by.attr}
        else:
            _, size, ok = constant(ctx, by, "a group size")
            if not ok:
                continue
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                ctx.error("E1037", by.span, f"a group size is a whole number >= 1, not {size!r}",
                          hint="or group by a persona field: group people by persona.city as cities")
                continue
            if pop["size"] % size:
                ctx.warning("W1002", by.span, f"{pop['size']} agents do not split evenly into groups of {size}",
                            hint=f"the last group has {pop['size'] % size}")
            entry = {"name": name, "population": decl.population, "size": size}
        entry["span"] = span_json(decl.span)
        ctx.groups[name] = entry
