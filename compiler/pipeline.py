"""The compiler pipeline: the passes in order, and the plan they assemble.

In: a dsl Program and `--set` overrides. Out: a Compiled (the plan as a canonical dict, its bytes
and hash, and warnings) or a DiagnosticError holding every error the passes found.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from populace.dsl import nodes as n
from populace.dsl.diagnostics import Diagnostic, DiagnosticError, Reporter, did_you_mean, sorted_diagnostics
from populace.dsl.load import Program

from .context import Context, span_json
from .declarations import (check_agent_prompts, check_agents, check_environments, check_groups, check_models,
                           check_personas, check_populations, collect_symbols, constant, resolve_params)
from .plan import PLAN_VERSION, canonical_bytes, validate_plan
from .workflow import check_workflow

SCENARIO_SETTINGS = {"seed": int, "description": str, "checkpoint_every": int}
MAX_AGENTS_PER_SHARD = 250_000


def check_scenario(ctx: Context) -> None:
    """Read the scenario block's settings: seed, description, checkpoint_every."""
    settings: dict = {"seed": 0, "checkpoint_every": 1}
    decl = ctx.scenario
    for s in decl.settings if decl else ():
        if s.name not in SCENARIO_SETTINGS:
            ctx.error("E1041", s.name_span, f"the scenario block has no setting `{s.name}`",
                      hint=did_you_mean(s.name, SCENARIO_SETTINGS) or "settings: seed, description, checkpoint_every; and param NAME = DEFAULT")
            continue
        _, value, ok = constant(ctx, s.value, f"`{s.name}`")
        want = SCENARIO_SETTINGS[s.name]
        if ok and (not isinstance(value, want) or isinstance(value, bool)):
            ctx.error("E1041", s.value.span, f"`{s.name}` must be {'a whole number' if want is int else 'text'}")
            continue
        if ok and want is int and value < 0:
            ctx.error("E1041", s.value.span, f"`{s.name}` must not be negative")
            continue
        if ok:
            settings[s.name] = value
    ctx.plan["settings"] = settings


def assign_shards(ctx: Context) -> None:
    """Say how each population may be split: the runtime picks the count, never above this size."""
    for pop in ctx.populations.values():
        pop["max_agents_per_shard"] = MAX_AGENTS_PER_SHARD


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


def compile_program(program: Program, overrides: list[str] | tuple = ()) -> Compiled:
    """Run every pass; raise DiagnosticError with all errors, else return the validated plan."""
    ctx = Context(program=program, overrides=list(overrides), reporter=Reporter(sources=dict(program.sources)))
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
        "plan_version": PLAN_VERSION,
        "scenario": {
            "name": name,
            "source": root.path,
            "seed": settings.pop("seed"),
            "settings": settings,
            "params": {k: v for k, (v, _) in ctx.params.items()},
            "sources": {f: hashlib.sha256(t.encode("utf-8")).hexdigest() for f, t in sorted(ctx.program.sources.items())},
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
    plan["plan_hash"] = hashlib.sha256(canonical_bytes(plan)).hexdigest()
    return plan


def compile_file(path: str, overrides=()) -> Compiled:
    from populace.dsl import load_program

    return compile_program(load_program(path), overrides)


__all__ = ["PASSES", "Compiled", "compile_program", "compile_file", "DiagnosticError", "n"]
