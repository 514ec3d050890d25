"""What stops a run before it starts: parts this runtime lacks, API keys not set, imports that fail.

In: a typed Plan (and whether the run replays from its cache, the scenario's folder, its budget). Out: a
list of problems, one line each, for the CLI to print before anything is spent.
"""
from __future__ import annotations

import os

from populace.compiler.plan import Plan
from populace.compiler.plan.extensions import ExtensionError
from populace.runtime.environments import builtin as environments
from populace.runtime.environments.python_kinds import Extensions, scenario_folder
from populace.runtime.models.base import ModelError, PythonModel


def used_models(plan: Plan) -> set[str]:
    used = {a.model for a in plan.agents.values() if a.model}
    used |= {step.model for step in plan.steps() if getattr(step, "OP", "") == "ask" and step.model}
    for p in plan.personas.values():
        used |= {f["model"] for f in p.fields if f["kind"] == "write"}
    return used


def unsupported(plan: Plan, replay: bool = False, folder: str | None = None, budget: float | None = None) -> list[str]:
    problems = []
    for name in sorted(used_models(plan)):
        model = plan.models[name]
        if budget is not None and not model.offline and not model.price:
            problems.append(f"a budget needs the price of every model it pays for: give model `{name}` "
                            f"price = {{input: USD, output: USD}} (per million tokens)")
        key_env = model.settings.get("api_key_env")
        if not model.offline and not replay and key_env and not os.environ.get(key_env):
            problems.append(f"model `{name}` ({model.provider}) needs its API key in the environment variable "
                            f"{key_env}, which is not set")
        if model.provider == "python":  # its function must import here (shards import it the same way)
            try:
                PythonModel(name, model.settings, model.limits, scenario_folder(plan, folder))
            except ModelError as e:
                problems.append(f"{e} (a module next to the scenario, or an installed one)")
    problems.extend(environments.check_plan(plan))
    try:  # a Python kind's module must import, match the plan and start, before anything is spent
        extensions = Extensions(plan, folder)
        for name in extensions.instances:
            extensions.start(name)
    except ExtensionError as e:
        problems.append(str(e))
    return problems
