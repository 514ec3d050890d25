"""The compiler pipeline: the passes in order, and the plan they assemble.

In: a dsl Program and `--set` overrides. Out: a Compiled (the plan as a canonical dict, its bytes
and hash, and warnings) or a DiagnosticError holding every error the passes found.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from populace.dsl import nodes as n
from populace.dsl.diagnostics import Diagnostic, DiagnosticError, Reporter, sorted_diagnostics
from populace.dsl.load import Program

from .context import Context, span_json
from .passes.agents import check_agents
from .passes.environments import check_environments
from .passes.groups import check_groups
from .passes.models import check_models
from .passes.params import resolve_params
from .passes.personas import check_personas
from .passes.populations import check_populations
from .passes.prompts import check_agent_prompts
from .passes.scenario import check_scenario
from .passes.shards import assign_shards
from .passes.states import lower_state_starts
from .passes.symbols import collect_symbols
from .passes.workflow import check_workflow
from .plan import canonical_bytes, needed_version, validate_plan

PASSES = (
    collect_symbols,
    resolve_params,
    check_scenario,
    check_models,
    check_personas,
    check_agents,
    check_populations,
    check_groups,
    check_environments,
    lower_state_starts,
    check_agent_prompts,
    check_workflow,
    assign_shards,
)


@dataclass(frozen=True)
class Compiled:
    plan: dict
    data: bytes  # canonical JSON bytes
    plan_hash: str
    warnings: list[Diagnostic]
    sources: dict


def compile_program(program: Program, overrides: list[str] | tuple = (), batch: bool = False,
                    prices: dict | None = None) -> Compiled:
    """Run every pass; raise DiagnosticError with all errors, else return the validated plan.
    `batch`: every Anthropic and OpenAI model sends its asks through the provider's batch API;
    `prices`: the prices table by model name (compiler/prices.py `load_prices`), else the built-in one."""
    ctx = Context(program=program, overrides=list(overrides), reporter=Reporter(sources=dict(program.sources)),
                  batch=batch, prices=prices)
    for compiler_pass in PASSES:
        compiler_pass(ctx)
    ctx.reporter.raise_if_errors()
    plan = assemble(ctx)
    validate_plan(plan)  # a schema failure here is a compiler bug, not a user error
    data = canonical_bytes(plan)
    return Compiled(plan=plan, data=data, plan_hash=plan["plan_hash"],
                    warnings=sorted_diagnostics(ctx.reporter.diagnostics), sources=ctx.reporter.sources)


def assemble(ctx: Context) -> dict:
    root = ctx.program.root
    name = ctx.scenario.name if ctx.scenario else os.path.splitext(os.path.basename(root.path))[0]
    settings = ctx.plan["settings"]
    plan = {
        "plan_version": "",  # below: the oldest version that has every feature used
        "scenario": {
            "name": name,
            "source": root.path,
            "seed": settings.pop("seed"),
            "settings": settings,
            "params": {k: v for k, (v, _) in ctx.params.items()},
            "sources": dict(sorted({**{f: hashlib.sha256(t.encode("utf-8")).hexdigest()
                                       for f, t in ctx.program.sources.items()}, **ctx.extra_sources}.items())),
            "span": span_json(ctx.scenario.span) if ctx.scenario else span_json(root.span),
        },
        "models": ctx.models,
        "personas": ctx.plan.get("personas", {}),
        "agents": ctx.plan.get("agents", {}),
        "populations": ctx.populations,
        "groups": ctx.groups,
        "environments": ctx.environments,
        "workflow": ctx.plan.get("workflow", []),
    }
    plan["plan_version"] = needed_version(plan)
    plan["plan_hash"] = hashlib.sha256(canonical_bytes(plan)).hexdigest()
    return plan


def compile_file(path: str, overrides=(), batch: bool = False, prices: dict | None = None) -> Compiled:
    from populace.dsl import load_program

    return compile_program(load_program(path), overrides, batch, prices)


__all__ = ["PASSES", "Compiled", "compile_program", "compile_file", "DiagnosticError", "n"]
