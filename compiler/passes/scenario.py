"""Pass 3, scenario: the scenario block's settings, and the extension modules it names.

Reads: ctx.scenario. Adds: ctx.plan["settings"] (seed, checkpoint_every, max_failed, budget, ...),
ctx.extension_kinds (kind -> the extension's declared spec) and ctx.extra_sources (extension files
next to the scenario, hashed, since the plan was compiled from them too).
"""
from __future__ import annotations

import hashlib
import os

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from ..context import Context
from ..values import constant

SCENARIO_SETTINGS = {"seed": int, "description": str, "checkpoint_every": int, "extensions": list, "max_failed": float,
                     "budget": "usd"}


def check_scenario(ctx: Context) -> None:
    """Read the scenario block's settings: seed, description, checkpoint_every, extensions."""
    settings: dict = {"seed": 0, "checkpoint_every": 1}
    decl = ctx.scenario
    for s in decl.settings if decl else ():
        if s.name not in SCENARIO_SETTINGS:
            ctx.error("E1041", s.name_span, f"the scenario block has no setting `{s.name}`",
                      hint=did_you_mean(s.name, SCENARIO_SETTINGS) or "settings: seed, description, checkpoint_every, extensions, max_failed, budget; and param NAME = DEFAULT")
            continue
        _, value, ok = constant(ctx, s.value, f"`{s.name}`")
        want = SCENARIO_SETTINGS[s.name]
        if ok and want is list:
            if not value or not all(isinstance(v, str) and _is_module_name(v) for v in value):
                ctx.error("E1041", s.value.span, "`extensions` is a list of Python module names",
                          hint='e.g. extensions = ["market"] for market.py next to the scenario')
                continue
            settings[s.name] = list(value)
            items = s.value.items if isinstance(s.value, n.ListLit) and len(s.value.items) == len(value) else ()
            load_extensions(ctx, list(value), [i.span for i in items] or [s.value.span] * len(value))
            continue
        if ok and want == "usd":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                ctx.error("E1041", s.value.span, "`budget` is an amount of dollars, more than 0",
                          hint="e.g. budget = 25usd (the run stops before the call that would spend more)")
                continue
            settings[s.name] = float(value)
            continue
        if ok and want is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                ctx.error("E1041", s.value.span, f"`{s.name}` is a share of the answers, from 0% to 100%",
                          hint="e.g. max_failed = 5% (a run fails when more than 5% of one ask's answers fail)")
                continue
            settings[s.name] = float(value)
            continue
        if ok and (not isinstance(value, want) or isinstance(value, bool)):
            ctx.error("E1041", s.value.span, f"`{s.name}` must be {'a whole number' if want is int else 'text'}")
            continue
        if ok and want is int and value < 0:
            ctx.error("E1041", s.value.span, f"`{s.name}` must not be negative")
            continue
        if ok:
            settings[s.name] = value
    ctx.plan["settings"] = settings


def _is_module_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def load_extensions(ctx: Context, modules: list[str], spans: list) -> None:
    """Import the scenario's extension modules (its folder first on the path) and note their kinds."""
    from ..plan.extensions import DeclarationError, ExtensionError, module_kinds

    path = ctx.program.root.path
    folder = os.path.dirname(os.path.abspath(path)) if path and os.path.exists(path) else None
    for module, span in zip(modules, spans):
        try:
            kinds = module_kinds(module, folder)
        except DeclarationError as e:  # it was found: its own code or declarations are at fault
            ctx.extensions_failed = True
            ctx.error("E1042", span, str(e), hint="see docs/extensions.md for what a kind declares")
            continue
        except ExtensionError as e:
            ctx.extensions_failed = True
            ctx.error("E1042", span, str(e), hint="a Python file next to the scenario (market.py for \"market\"), "
                      "or an installed module")
            continue
        if not kinds:
            ctx.extensions_failed = True
            ctx.error("E1042", span, f"`{module}` has no class marked @environment_kind",
                      hint="from populace.runtime import environment_kind, then @environment_kind(\"name\") on a class")
        local = os.path.join(folder, *module.split(".")) + ".py" if folder else ""
        if local and os.path.exists(local):  # its text is part of what the plan was compiled from
            with open(local, "rb") as f:
                ctx.extra_sources[os.path.join(os.path.dirname(path), *module.split(".")) + ".py"] = \
                    hashlib.sha256(f.read()).hexdigest()
        for kind, spec in kinds.items():
            if kind in ctx.extension_kinds and ctx.extension_kinds[kind].target != spec.target:
                ctx.error("E1042", span, f"two extensions name the kind `{kind}`: "
                          f"{ctx.extension_kinds[kind].target} and {spec.target}")
            ctx.extension_kinds[kind] = spec
