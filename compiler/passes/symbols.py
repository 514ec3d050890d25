"""Pass 1, symbols: every declaration of every module, by kind, with duplicates reported.

Reads: the Program (root and imported modules). Adds: ctx.decls (kind -> declarations), ctx.scenario,
ctx.workflow (the workflow blocks).
"""
from __future__ import annotations

from populace.dsl import nodes as n

from ..context import Context
from ..values import article


DECL_KINDS = {n.ModelDecl: "model", n.PersonaDecl: "persona", n.AgentDecl: "agent", n.PopulationDecl: "population",
              n.GroupDecl: "group", n.EnvironmentDecl: "environment"}


# ------------------------------------------------------------------ symbols
def collect_symbols(ctx: Context) -> None:
    """Gather declarations from every module; report duplicates and a missing or second workflow."""
    decls: dict[str, dict[str, n.Decl]] = {k: {} for k in DECL_KINDS.values()}
    scenarios, workflows = [], []
    for module in ctx.program.modules:
        for decl in module.decls:
            if isinstance(decl, n.ScenarioDecl):
                scenarios.append(decl)
            elif isinstance(decl, n.WorkflowDecl):
                workflows.append(decl)
            elif type(decl) in DECL_KINDS:
                kind = DECL_KINDS[type(decl)]
                table = decls[kind]
                if decl.name in table:
                    first = table[decl.name].name_span
                    ctx.error("E1001", decl.name_span, f"{kind} `{decl.name}` is declared twice",
                              label="second declaration", hint=f"the first is at {first.file}:{first.line}")
                    continue
                table[decl.name] = decl
    for extra in scenarios[1:]:
        ctx.error("E1040", extra.name_span, "a second scenario block", hint="one scenario block per run; imported files declare parts, not scenarios")
    for extra in workflows[1:]:
        ctx.error("E1040", extra.span, "a second workflow", hint="merge the statements into one workflow")
    # The same name for two kinds of things makes references ambiguous.
    seen: dict[str, str] = {}
    for kind in ("population", "environment", "group"):
        for name, decl in decls[kind].items():
            if name in seen:
                ctx.error("E1001", decl.name_span, f"`{name}` names both {article(seen[name])} {seen[name]} and {article(kind)} {kind}",
                          hint="give them different names")
            elif name in ("param", "persona", "self"):
                ctx.error("E1001", decl.name_span, f"`{name}` is a reserved name")
            seen[name] = kind
    ctx.decls = decls
    ctx.scenario = scenarios[0] if scenarios else None
    ctx.workflow = [workflows[0]] if workflows else []
