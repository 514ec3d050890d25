"""What `populace check` finds that only the runtime can know: a python model's function that does
not import, a network's edge list that is not there, a Python environment kind that does not load,
and a file that declares nothing. A run would fail on each at its start; check says it first.

In: a compiled plan (the dict), the scenario's folder, the loaded program. Out: Diagnostics with
code E1047 (cannot be loaded) or E1048 (an empty file), at the declaration concerned.
"""
from __future__ import annotations

import os

from populace.dsl.diagnostics import Diagnostic
from populace.dsl.nodes import Span


def _span(span: dict | None, fallback: str) -> Span:
    if not span:
        return Span(file=fallback, line=1, column=1, end_line=1, end_column=2)
    return Span(file=span["file"], line=span["line"], column=span["column"], end_line=span["line"],
                end_column=span.get("end_column", span["column"] + 1) if span.get("end_line") == span["line"]
                else span["column"] + 1)


def runtime_checks(raw: dict, folder: str) -> list[Diagnostic]:
    from populace.compiler.plan import plan_from_dict
    from populace.compiler.plan.extensions import ExtensionError
    from populace.runtime.engine.preflight import used_models
    from populace.runtime.environments.python_kinds import Extensions, scenario_folder
    from populace.runtime.models.base import ModelError, PythonModel

    plan = plan_from_dict(raw)
    source = raw["scenario"]["source"]
    out = []
    for name in sorted(used_models(plan)):
        model = plan.models[name]
        if model.provider != "python":
            continue
        try:
            PythonModel(name, model.settings, model.limits, scenario_folder(plan, folder))
        except ModelError as e:
            out.append(Diagnostic(code="E1047", message=str(e), span=_span(raw["models"][name].get("span"), source),
                                  label="cannot be loaded",
                                  hint="a module next to the scenario or an installed one, and a function in it: "
                                       "function = \"module:function\""))
    for name, env in raw.get("environments", {}).items():
        edges = (env.get("params") or {}).get("edges")
        if env.get("kind") == "network" and edges:
            span = env.get("span") or {}
            path = os.path.join(os.path.dirname(os.path.abspath(span.get("file", source))), edges)
            if not os.path.isfile(path):
                out.append(Diagnostic(code="E1047", message=f"environment `{name}`: its edge list {edges} is not there",
                                      span=_span(span, source), label="no such file",
                                      hint="the path is read relative to the scenario file"))
    try:
        extensions = Extensions(plan, folder)
        for name in extensions.instances:
            extensions.start(name)
    except ExtensionError as e:
        out.append(Diagnostic(code="E1047", message=str(e), span=_span(raw["scenario"].get("span"), source), label="cannot be loaded"))
    return out


def empty_file(program) -> list[Diagnostic]:
    """A root file with no declaration at all: `ok` would say nothing was wrong with nothing."""
    root = program.root
    if root.decls:
        return []
    return [Diagnostic(code="E1048", message="this file declares nothing", span=Span(file=root.path, line=1, column=1, end_line=1, end_column=2),
                       hint="a scenario declares models, agents, populations and a workflow; see docs/language.md")]
