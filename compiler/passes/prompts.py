"""Pass 11, agent prompts (lowering): each agent's system prompt checked and lowered; the plan's agents.

Reads: ctx.agents (after the states pass). Adds: ctx.plan["agents"].
"""
from __future__ import annotations

from ..context import Context, span_json
from ..expressions import Checker, Scope
from ..values import state_json


def check_agent_prompts(ctx: Context) -> None:
    """Type-check each agent's system prompt against its persona and state (and state starts)."""
    for name, info in ctx.agents.items():
        system = info["system"]
        lowered = None
        if system is not None:
            ty, lowered = Checker(ctx, Scope("agent", pop="agent:" + name)).expr(system.value)
            if ty.kind not in ("str", "any"):
                ctx.error("E1010", system.value.span, "system is the system prompt: text")
        ctx.plan.setdefault("agents", {})[name] = {
            "name": name, "persona": info["persona"], "model": info["model"], "memory": info["memory"],
            "system": lowered, "span": span_json(info["span"]),
            "state": {k: state_json(v) for k, v in sorted(info["state"].items())},
        }
