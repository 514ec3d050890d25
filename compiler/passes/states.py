"""Pass 10, state starts (lowering): start values that read the agent, typed and lowered.

Reads: ctx.agents (state with start nodes), ctx.populations. Adds: each state field's `expr`, and
the population field's `default_expr` where a kind computes its start.
"""
from __future__ import annotations

from ..context import Context
from ..expressions import Checker, Scope
from ..types import assignable, describe


def lower_state_starts(ctx: Context) -> None:
    """Type the start values that read the agent (`state w: float = persona.income * 0.1`): persona
    fields, params and self.id, not other state (which has no value yet)."""
    for name, info in ctx.agents.items():
        for st_name, st in info["state"].items():
            if st.get("node") is None:
                continue
            vty, ir = Checker(ctx, Scope("agent", pop="agent:" + name)).expr(st["node"])
            if vty.kind == "any":
                continue
            if not assignable(st["type"], vty):
                ctx.error("E1010", st["node"].span, f"state `{st_name}` is {describe(st['type'])}, but its start is "
                          f"{describe(vty.scalar())}")
            elif _reads_state(ir):
                ctx.error("E1010", st["node"].span, f"the start of `{st_name}` reads another state field, which has "
                          "no value yet", hint="start from persona fields, params and self.id")
            else:
                st["expr"] = ir
    for pop in ctx.populations.values():
        for st_name, field in pop["state"].items():
            kinds = [ctx.agents[part["agent"]]["state"].get(st_name) or {} for part in pop["mixture"]]
            start = next((st["expr"] for st in kinds if st.get("expr") is not None), None)
            if start is not None:  # each kind's own start is in its agent entry; this says "compute starts"
                field["default_expr"] = start


def _reads_state(ir) -> bool:
    if isinstance(ir, dict):
        return ir.get("src") in ("state", "output") or any(_reads_state(v) for v in ir.values())
    return isinstance(ir, list) and any(_reads_state(v) for v in ir)
