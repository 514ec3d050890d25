"""Passes over declarations: symbols, params, models, personas, agents, populations, environments.

In: a Context holding the parsed Program. Out: the Context's symbol tables and the plan's
`scenario`, `models`, `personas`, `agents`, `populations`, `groups` and `environments` parts.
Each pass reports diagnostics and keeps going.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
from graphlib import CycleError, TopologicalSorter
from importlib import resources

import jsonschema

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean
from populace.dsl.parser import parse_text
from populace.dsl.build import build_expression

from .context import Context, FieldInfo, Quiet, span_json
from .environments import lower_kind
from .expressions import Checker, Scope
from .plan.evaluate import EvalError, evaluate, is_constant
from .plan.tables import table_cell
from .types import ANY, BOOL, FLOAT, INT, NUMERIC, STR, Ty, assignable, describe, list_of, to_json, type_of_value, unify_all

DECL_KINDS = {n.ModelDecl: "model", n.PersonaDecl: "persona", n.AgentDecl: "agent", n.PopulationDecl: "population",
              n.GroupDecl: "group", n.EnvironmentDecl: "environment"}

DEFAULT_PRICES = {  # USD per million tokens; a model block's `price` overrides
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_write": 1.25},
    "claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75},
    "claude-opus-4-1": {"input": 15.0, "output": 75.0, "cache_read": 1.5, "cache_write": 18.75},
    "gpt-4o-mini": {"input": 0.15, "output": 0.6},
    "gpt-4o": {"input": 2.5, "output": 10.0},
    "gpt-4.1-mini": {"input": 0.4, "output": 1.6},
}
DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
SECRET_SETTINGS = ("api_key", "key", "token", "secret", "password", "authorization")


def constant(ctx: Context, e: n.Expr, what: str):
    """Evaluate an expression that must be known before the run (literals, params, arithmetic)."""
    reported = len(ctx.reporter.diagnostics)
    ty, ir = Checker(ctx, Scope("constant")).expr(e)
    if (ty.kind == "any" and ir == {"lit": None}) or len(ctx.reporter.diagnostics) > reported:
        return ty, None, False  # already reported inside the expression; evaluating it would only repeat that
    if not is_constant(ir):
        ctx.error("E1022", e.span, f"{what} must be known before the run", hint="use literals and param.NAME")
        return ty, None, False
    try:
        value = evaluate(ir)
    except EvalError as err:
        ctx.error("E1022", e.span, f"{what} cannot be computed: {err.message}")
        return ty, None, False
    if not plan_number_ok(value):
        ctx.error("E1022", e.span, f"{what} is too large for a plan", hint="numbers are finite, whole numbers below 2**63")
        return ty, None, False
    return ty, value, True


def plan_number_ok(value) -> bool:
    """Can this constant be written to plan JSON (finite floats, 64-bit whole numbers)?"""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -2**63 <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(plan_number_ok(v) for v in value)
    if isinstance(value, dict):
        return all(plan_number_ok(v) for v in value.values())
    return True


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
                ctx.error("E1001", decl.name_span, f"`{name}` names both {_article(seen[name])} {seen[name]} and {_article(kind)} {kind}",
                          hint="give them different names")
            elif name in ("param", "persona", "self"):
                ctx.error("E1001", decl.name_span, f"`{name}` is a reserved name")
            seen[name] = kind
    ctx.decls = decls
    ctx.scenario = scenarios[0] if scenarios else None
    ctx.workflow = [workflows[0]] if workflows else []


def resolve_params(ctx: Context) -> None:
    """Evaluate params in order, apply --set overrides, check their types."""
    params = ctx.scenario.params if ctx.scenario else ()
    seen = {}
    for param in params:
        if param.name in seen:
            ctx.error("E1001", param.name_span, f"param `{param.name}` is declared twice")
            continue
        seen[param.name] = param
        ty, value, ok = constant(ctx, param.default, f"param `{param.name}`")
        if param.type is not None:
            declared = output_type(ctx, param.type)
            if ok and not _fits(declared, value):
                if declared.kind == "enum":
                    ctx.error("E1010", param.default.span, f"{value!r} is not one of {describe(declared)}",
                              hint=did_you_mean(str(value), [str(v) for v in declared.values]))
                else:
                    ctx.error("E1010", param.default.span,
                              f"the default of `{param.name}` is {describe(ty)}, not {describe(declared)}")
                ok = False
            ty = declared
        if ok and not _in_range(value, ty):
            ctx.error("E1010", param.default.span, f"{value!r} is outside {describe(ty)}")
        if isinstance(value, int) and not isinstance(value, bool) and ty.kind == "float":
            value = float(value)
        ctx.params[param.name] = (value, ty.scalar())
    if ctx.overrides:
        # Each override is line i of a pseudo-file `--set`, so its diagnostics show it with a caret.
        ctx.reporter.sources["--set"] = "\n".join(ctx.overrides)
    for line, item in enumerate(ctx.overrides, start=1):
        _override(ctx, item, line)


def _override(ctx: Context, item: str, line: int) -> None:
    def at(start: int, end: int) -> n.Span:
        return n.Span(file="--set", line=line, column=start + 1, end_line=line, end_column=max(end, start + 1) + 1)

    if "=" not in item:
        ctx.error("E1021", at(0, len(item)), f"`--set {item}` needs NAME=VALUE", hint="e.g. --set players=1000")
        return
    name, text = item.split("=", 1)
    name_at, value_at = at(0, len(name)), at(len(name) + 1, len(item))
    name = name.strip()
    if name.startswith("param."):
        name = name[len("param."):]
    if name not in ctx.params:
        ctx.error("E1021", name_at, f"`--set {name}`: no param `{name}` in the scenario", label="not a param",
                  hint=did_you_mean(name, ctx.params) or f"params: {', '.join(ctx.params) or 'none'}")
        return
    _, ty = ctx.params[name]
    tree, diagnostics = parse_text(text.strip(), "--set", start="expr")
    value = None
    if tree is None:
        if ty.kind in ("str", "enum", "any"):
            value = text  # an unquoted string is what a shell user writes
        else:
            ctx.error("E1021", value_at, f"`--set {item}`: `{text}` is not a value", hint="numbers as 1000 or 0.5, text in quotes")
            return
    else:
        expr = build_expression(tree, "--set")
        vty, ir = Checker(Quiet(ctx), Scope("constant")).expr(expr)
        if not is_constant(ir) or (vty.kind == "any" and ir == {"lit": None}):
            if ty.kind in ("str", "enum") and isinstance(expr, n.Name):
                value = text.strip()
            else:
                ctx.error("E1021", value_at, f"`--set {item}`: param `{name}` is {describe(ty)}; `{text}` is not one",
                          label=f"not {describe(ty)}", hint="numbers as 1000 or 0.5, text in quotes")
                return
        else:
            try:
                value = evaluate(ir)
            except EvalError as err:
                ctx.error("E1021", value_at, f"`--set {item}`: {err.message}")
                return
    if ty.kind in ("str", "enum") and not isinstance(value, str) and text.strip() in ("none", "true", "false"):
        value = text.strip()  # `--set mode=none` means the word: a str param has no other reading of it
    vty = type_of_value(value)
    if not _fits(ty, value) or not _in_range(value, ty):
        shown = "none" if value is None else f"{describe(vty)} {value!r}"
        ctx.error("E1021", value_at, f"`--set {item}`: param `{name}` is {describe(ty)}, not {shown}",
                  label=f"not {describe(ty)}")
        return
    if ty.kind == "float" and isinstance(value, int):
        value = float(value)
    ctx.params[name] = (value, ty)


def _fits(declared: Ty, value) -> bool:
    """Can this constant be a value of the declared type? An enum takes exactly its values."""
    if declared.kind == "enum":
        return value in declared.values
    return assignable(declared, type_of_value(value))


def _in_range(value, ty: Ty) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return ty.kind != "enum" or value in ty.values
    return (ty.low is None or value >= ty.low) and (ty.high is None or value <= ty.high)


# ------------------------------------------------------------------ types written in the source
def output_type(ctx: Context, t: n.TypeExpr) -> Ty:
    """A TypeExpr (output, state, param, field annotation) to a Ty; reports malformed types."""
    if t.form == "record":
        names = set()
        fields = []
        for name, sub in t.fields:
            if name in names:
                ctx.error("E1017", sub.span, f"record field `{name}` appears twice")
            names.add(name)
            fields.append((name, output_type(ctx, sub)))
        if not fields:
            ctx.error("E1017", t.span, "a record type needs at least one field")
        return Ty("record", fields=tuple(fields))
    if t.form == "generic":
        if t.name != "list":
            ctx.error("E1017", t.span, f"unknown type `{t.name}[...]`", hint="list[T] is the only generic type")
            return ANY
        return list_of(output_type(ctx, t.item))
    if t.form == "call":
        if t.name != "enum":
            ctx.error("E1017", t.span, f"unknown type `{t.name}(...)`", hint='enum("a", "b") lists the allowed values')
            return ANY
        values = []
        for arg in t.args:
            if arg.name or arg.key is not None or not isinstance(arg.value, n.Literal) or arg.value.kind not in ("str", "int"):
                ctx.error("E1017", arg.span, "enum values are strings or whole numbers")
                continue
            if arg.value.value in values:
                ctx.error("E1017", arg.span, f"enum value {arg.value.text} appears twice")
                continue
            values.append(arg.value.value)
        if not t.args:
            ctx.error("E1017", t.span, "an enum needs at least one value", hint='e.g. enum("yes", "no")')
        return Ty("enum", values=tuple(values))
    base = {"int": INT, "float": FLOAT, "bool": BOOL, "str": STR, "list": list_of(ANY)}.get(t.name)
    if base is None:
        ctx.error("E1017", t.span, f"unknown type `{t.name}`",
                  hint=did_you_mean(t.name, ("int", "float", "bool", "str", "enum", "list")) or
                  "types: int, float, bool, str, enum(...), list[T], { field: type }")
        return ANY
    if t.low is None:
        return base
    if base.kind not in NUMERIC:
        ctx.error("E1017", t.span, f"only int and float take a range, not {t.name}")
        return base
    _, low, ok1 = constant(ctx, t.low, "the range's lower end")
    _, high, ok2 = constant(ctx, t.high, "the range's upper end")
    if not (ok1 and ok2):
        return base
    if base.kind == "int" and (not float(low).is_integer() or not float(high).is_integer()):
        ctx.error("E1017", t.span, "an int range needs whole-number ends")
    if low > high:
        ctx.error("E1017", t.span, f"the range {low}..{high} is empty", label="lower end above upper end",
                  hint=f"write {high}..{low}")
    return Ty(base.kind, low=low, high=high)


# ------------------------------------------------------------------ models
@functools.cache
def _model_schemas() -> dict:
    return json.loads(resources.files("populace.compiler").joinpath("schemas/models.json").read_text())


def check_models(ctx: Context) -> None:
    """Evaluate each model's settings and validate them against its provider's JSON Schema."""
    schemas = _model_schemas()
    for name, decl in ctx.decls["model"].items():
        settings, spans = {}, {}
        for s in decl.settings:
            if s.name in settings:
                ctx.error("E1001", s.name_span, f"setting `{s.name}` is given twice")
                continue
            spans[s.name] = s
            if s.name.lower() in SECRET_SETTINGS:
                ctx.error("E1020", s.span, f"`{s.name}`: secrets never go in a scenario file",
                          label="a secret in the scenario", hint="name the environment variable instead: api_key_env = \"MY_KEY\"")
                continue
            if s.name == "provider" and isinstance(s.value, n.Name):
                settings[s.name] = s.value.id
                continue
            ty, value, ok = constant(ctx, s.value, f"`{s.name}`")
            if ok:
                if isinstance(value, str) and (value.startswith("sk-") or value.startswith("Bearer ")):
                    ctx.error("E1020", s.value.span, f"`{s.name}` looks like an API key",
                              hint="keys come from the environment: api_key_env = \"NAME\"")
                    continue
                settings[s.name] = value
        provider = settings.get("provider")
        if provider not in schemas["providers"]:
            span = spans["provider"].value.span if "provider" in spans else decl.name_span
            ctx.error("E1019", span, f"model `{name}` needs a provider" if provider is None else f"unknown provider `{provider}`",
                      hint=did_you_mean(str(provider), schemas["providers"]) or "providers: anthropic, openai, mock, python")
            continue
        if provider == "anthropic":
            for removed in ("temperature", "top_p", "top_k"):
                if removed in spans:
                    ctx.error("E1019", spans[removed].name_span,
                              f"the Anthropic Messages API no longer accepts `{removed}`",
                              label="rejected with HTTP 400 since API version 2026-10-21",
                              hint="remove it: Claude models sample with their own defaults")
                    settings.pop(removed, None)
        schema = dict(schemas["providers"][provider])
        schema["properties"] = {**schemas["$defs"]["common"], **schema["properties"]}
        schema["additionalProperties"] = False
        validator = jsonschema.Draft202012Validator(schema)
        for err in sorted(validator.iter_errors(settings), key=lambda e: list(e.absolute_path)):
            key = err.absolute_path[0] if err.absolute_path else None
            if err.validator == "additionalProperties":
                for extra in sorted(set(settings) - set(schema["properties"])):
                    ctx.error("E1019", spans[extra].name_span, f"{_article(provider)} {provider} model has no setting `{extra}`",
                              hint=did_you_mean(extra, schema["properties"]) or
                              f"settings: {', '.join(sorted(schema['properties']))}")
            elif err.validator == "required":
                missing = ", ".join(f"`{k}`" for k in err.validator_value if k not in settings)
                ctx.error("E1019", decl.name_span, f"{_article(provider)} {provider} model needs {missing}",
                          hint=_required_hint(provider))
            else:
                span = spans[key].value.span if key in spans else decl.name_span
                ctx.error("E1019", span, f"`{key}`: {_schema_words(err)}")
        if provider in DEFAULT_KEY_ENV:
            settings.setdefault("api_key_env", DEFAULT_KEY_ENV[provider])
        price = settings.pop("price", None) or DEFAULT_PRICES.get(settings.get("name", ""))
        limits = {k: settings.pop(k) for k in ("in_flight", "per_minute", "tokens_per_minute") if k in settings}
        limits.setdefault("in_flight", {"anthropic": 64, "openai": 64}.get(provider, 1024))
        ctx.models[name] = {"name": name, "provider": provider, "settings": {k: v for k, v in settings.items() if k != "provider"},
                            "limits": limits, "price": price, "price_known": price is not None or provider in ("mock", "python"),
                            "span": span_json(decl.span)}


def _required_hint(provider: str) -> str:
    return {"python": 'function = "module:function", a function of yours that returns the answer',
            "anthropic": 'name = "claude-haiku-4-5"', "openai": 'name = "MODEL", base_url = "http://host:8000/v1"'}.get(provider, "")


_PATTERN_WORDS = {
    "^https?://": "must start with http:// or https://",
    "^[A-Za-z_][A-Za-z0-9_]*$": "is not an environment variable name (letters, digits, _)",
    "^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$": "is not written module:function",
}


def _schema_words(err) -> str:
    v = err.validator
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        word = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "above", "exclusiveMaximum": "below"}[v]
        return f"must be {word} {err.validator_value}, not {err.instance!r}"
    if v == "type":
        return f"must be {err.validator_value}, not {type(err.instance).__name__} {err.instance!r}"
    if v in ("oneOf", "anyOf") and err.context:
        # "not valid under any of the given schemas" says nothing; explain the closest alternative
        fitting = [c for c in err.context if c.validator != "type"] or err.context  # the alternative of the right type
        return _schema_words(jsonschema.exceptions.best_match(fitting))
    if v == "pattern":
        return f"{err.instance!r} {_PATTERN_WORDS.get(err.validator_value, 'is not in the expected form')}"
    if v == "enum":
        return f"must be one of {', '.join(map(str, err.validator_value))}"
    return err.message


# ------------------------------------------------------------------ personas
DISTRIBUTIONS = {
    "uniform": (("low", "high"), FLOAT),
    "uniform_int": (("low", "high"), INT),
    "normal": (("mean", "sd"), FLOAT),
    "lognormal": (("mean", "sigma"), FLOAT),
    "beta": (("a", "b"), FLOAT),
    "bernoulli": (("p",), BOOL),
    "poisson": (("lam",), INT),
}
SPECIAL = ("choice", "sample", "by", "write")


def check_personas(ctx: Context) -> None:
    """Check each persona's distributions, derived fields and written backgrounds; order fields by use."""
    ctx.plan["personas"] = {}
    for name, decl in ctx.decls["persona"].items():
        fields: dict[str, Ty] = {}
        by_name: dict[str, n.PersonaField] = {}
        for f in decl.fields:
            if f.name in by_name:
                ctx.error("E1001", f.name_span, f"persona field `{f.name}` is declared twice")
                continue
            if f.name.startswith("_"):
                ctx.error("E1035", f.name_span, "names starting with `_` are private")
            by_name[f.name] = f
            fields[f.name] = ANY
        ctx.persona_fields[name] = fields
        # Two rounds: the first learns each field's type, the second checks uses against them.
        lowered, deps = {}, {}
        for _ in range(2):
            for f in by_name.values():
                scope = Scope("persona", persona=name)
                silent = _ in (0,)
                entry, ty = _persona_field(ctx if not silent else Quiet(ctx), f, scope)
                fields[f.name] = ty
                lowered[f.name] = entry
                deps[f.name] = set(scope.refs) - {f.name}
                if f.name in scope.refs:
                    if not silent:
                        ctx.error("E1026", f.span, f"`{f.name}` depends on itself")
        try:
            TopologicalSorter({k: sorted(v) for k, v in sorted(deps.items())}).prepare()
            order = _source_order_topological(list(by_name), deps)
        except CycleError as e:
            cycle = " -> ".join(reversed(e.args[1]))  # graphlib lists it against the direction of use
            first = by_name[e.args[1][0]]
            ctx.error("E1026", first.name_span, "persona fields depend on each other in a cycle",
                      hint=f"the cycle: {cycle} (each uses the next)")
            order = list(by_name)
        ctx.plan["personas"][name] = {
            "name": name, "span": span_json(decl.span),
            "fields": [dict(lowered[k], name=k, type=to_json(fields[k]), span=span_json(by_name[k].span))
                       for k in order if k in lowered],
        }


def _source_order_topological(names: list[str], deps: dict[str, set]) -> list[str]:
    # Keep the order the user wrote, moving a field only as far as its dependencies require.
    done, order = set(), []
    while len(order) < len(names):
        for name in names:
            if name not in done and deps.get(name, set()) & set(names) <= done:
                done.add(name)
                order.append(name)
                break
    return order


def _persona_field(ctx, f: n.PersonaField, scope: Scope) -> tuple[dict, Ty]:
    if not f.sampled:
        ty, ir = Checker(ctx, scope).expr(f.value)
        return {"kind": "derive", "expr": ir}, ty.scalar()
    value = f.value
    if not isinstance(value, n.Call) or not isinstance(value.func, n.Name):
        ctx.error("E1023", value.span, "`~` takes a distribution, e.g. uniform_int(18, 65)",
                  hint="use `=` for a value computed from other fields")
        return {"kind": "derive", "expr": {"lit": None}}, ANY
    fname = value.func.id
    if f.cases is not None and fname != "by":
        ctx.error("E1023", value.span, "a `{ ... }` table of cases follows only by(field)")
    if f.reuse_per is not None and fname != "write":
        ctx.error("E1027", f.span, "`reuse per` applies to write(...) only")
    if fname == "by":
        return _by(ctx, f, scope)
    if fname == "write":
        return _write(ctx, f, scope)
    if fname == "sample":
        return _table(ctx, value)
    dist, ty = distribution(ctx, value)
    return {"kind": "sample", "dist": dist}, ty


def distribution(ctx, call: n.Call) -> tuple[dict, Ty]:
    """A distribution call with constant arguments -> ({"name", "args"}, the sampled type)."""
    fname = call.func.id
    if fname == "choice":
        return _choice(ctx, call)
    if fname not in DISTRIBUTIONS:
        ctx.error("E1023", call.func.span, f"unknown distribution `{fname}`",
                  hint=did_you_mean(fname, list(DISTRIBUTIONS) + list(SPECIAL)) or
                  "distributions: " + ", ".join(sorted(list(DISTRIBUTIONS) + list(SPECIAL))))
        return {"name": "constant", "args": {"value": None}}, ANY
    names, ty = DISTRIBUTIONS[fname]
    args: dict = {}
    positional = [a for a in call.args if a.name is None and a.key is None]
    if len(positional) != len(names):
        ctx.error("E1023", call.span, f"{fname} takes {len(names)} number{'s' if len(names) > 1 else ''} "
                  f"({', '.join(names)}), not {len(positional)}", hint=f"e.g. {fname}({', '.join(_EXAMPLE[fname])})")
        return {"name": fname, "args": {}}, ty
    for key, arg in zip(names, positional):
        vty, v, ok = constant(ctx, arg.value, f"`{key}`")
        if ok and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            ctx.error("E1023", arg.span, f"`{key}` of {fname} must be a number, not {describe(vty)}")
            ok = False
        if ok:
            args[key] = v
    for arg in call.args:
        if arg.key is not None:
            ctx.error("E1023", arg.span, f"{fname} takes no `key: value` pairs")
        elif arg.name is not None:
            if arg.name not in ("clamp", "round") or fname not in ("normal", "lognormal", "uniform", "beta"):
                ctx.error("E1023", arg.span, f"{fname} has no option `{arg.name}`",
                          hint="normal, lognormal and uniform take clamp = [low, high] and round = digits")
                continue
            vty, v, ok = constant(ctx, arg.value, f"`{arg.name}`")
            if not ok:
                continue
            if arg.name == "clamp":
                if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and v[0] <= v[1]):
                    ctx.error("E1023", arg.value.span, "clamp takes [low, high] with low <= high")
                    continue
                args["clamp"] = v
            else:
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    ctx.error("E1023", arg.value.span, "round takes a number of decimal digits (0 gives whole numbers)")
                    continue
                args["round"] = v
                if v == 0:
                    ty = INT
    _check_params(ctx, call, fname, args)
    if "clamp" in args and ty.kind in NUMERIC:
        ty = Ty(ty.kind, low=args["clamp"][0], high=args["clamp"][1])
    elif fname in ("uniform", "uniform_int") and "low" in args and "high" in args:
        ty = Ty(ty.kind, low=args["low"], high=args["high"])
    elif fname == "beta":
        ty = Ty("float", low=0.0, high=1.0)
    return {"name": fname, "args": args}, ty


_EXAMPLE = {"uniform": ("0", "1"), "uniform_int": ("18", "65"), "normal": ("170", "10"), "lognormal": ("10", "0.5"),
            "beta": ("2", "5"), "bernoulli": ("0.3",), "poisson": ("3",)}


def _check_params(ctx, call, fname, args) -> None:
    def bad(msg):
        ctx.error("E1023", call.span, f"{fname}: {msg}")

    if fname in ("uniform", "uniform_int") and {"low", "high"} <= args.keys() and args["low"] > args["high"]:
        bad("low is above high")
    if fname == "uniform_int" and any(not float(args.get(k, 0)).is_integer() for k in ("low", "high")):
        bad("the ends must be whole numbers")
    if fname in ("normal", "lognormal") and args.get("sd", args.get("sigma", 1)) < 0:
        bad("the spread must not be negative")
    if fname == "beta" and (args.get("a", 1) <= 0 or args.get("b", 1) <= 0):
        bad("a and b must be positive")
    if fname == "bernoulli" and not 0 <= args.get("p", 0) <= 1:
        bad("p must be between 0 and 1")
    if fname == "poisson" and args.get("lam", 0) < 0:
        bad("lam must not be negative")


def _choice(ctx, call: n.Call) -> tuple[dict, Ty]:
    values, weights = [], []
    pairs = [a for a in call.args if a.key is not None]
    plain = [a for a in call.args if a.key is None and a.name is None]
    if any(a.name is not None for a in call.args):
        ctx.error("E1023", call.span, "choice takes values, or value: weight pairs")
    if pairs and plain:
        ctx.error("E1023", call.span, "choice takes either all values with weights or none",
                  hint='choice("a": 2, "b": 1) or choice("a", "b")')
        return {"name": "choice", "values": [], "weights": []}, ANY
    if not call.args:
        ctx.error("E1023", call.span, "choice needs at least one value")
        return {"name": "choice", "values": [], "weights": []}, ANY
    for arg in call.args:
        key = arg.key if arg.key is not None else arg.value
        _, v, ok = constant(ctx, key, "a choice value")
        if not ok:
            continue
        if v in values:
            ctx.error("E1023", key.span, f"{v!r} appears twice in choice")
            continue
        w = 1
        if arg.key is not None:
            _, w, okw = constant(ctx, arg.value, "a weight")
            if not okw or not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                ctx.error("E1024", arg.value.span, "a weight must be a number >= 0")
                continue
        values.append(v)
        weights.append(float(w))
    if values and sum(weights) <= 0:
        ctx.error("E1024", call.span, "the weights add up to zero", hint="give at least one value a positive weight")
    if all(isinstance(v, str) for v in values):
        ty = Ty("enum", values=tuple(values))
    else:
        ty = unify_all([type_of_value(v) for v in values])
    total = sum(weights) or 1.0
    return {"name": "choice", "values": values, "weights": [w / total for w in weights]}, ty


def _by(ctx, f: n.PersonaField, scope: Scope) -> tuple[dict, Ty]:
    call = f.value
    if len(call.args) != 1 or not isinstance(call.args[0].value, n.Name):
        ctx.error("E1023", call.span, "by(...) names one persona field, e.g. by(occupation) { ... }")
        return {"kind": "derive", "expr": {"lit": None}}, ANY
    on = call.args[0].value
    on_ty, _ = Checker(ctx, scope).expr(on)
    if not f.cases:
        ctx.error("E1023", call.span, "by(...) needs a table of cases", hint='by(occupation) { "teacher": normal(45000, 5000) }')
        return {"kind": "derive", "expr": {"lit": None}}, ANY
    cases, default, types = [], None, []
    for case in f.cases:
        if not isinstance(case.value, n.Call) or not isinstance(case.value.func, n.Name):
            ctx.error("E1023", case.value.span, "each case is a distribution, e.g. normal(45000, 5000)")
            continue
        dist, ty = distribution(ctx, case.value)
        types.append(ty)
        if case.key_text == "else":
            default = dist
            continue
        if on_ty.kind == "enum" and case.key not in on_ty.values:
            ctx.error("E1023", case.span, f"{case.key_text} is not a value of `{on.id}`",
                      hint=did_you_mean(str(case.key), [str(v) for v in on_ty.values]) or
                      f"values: {', '.join(map(str, on_ty.values))}")
        cases.append({"key": case.key, "dist": dist})
    if on_ty.kind == "enum" and default is None:
        missing = [v for v in on_ty.values if v not in [c["key"] for c in cases]]
        if missing:
            ctx.error("E1023", call.span, f"no case for {', '.join(map(repr, missing))}",
                      hint="add those cases, or an `else: ...` case")
    ty = unify_all(types) if types else ANY
    if ty.kind in NUMERIC:
        ty = Ty(ty.kind)
    return {"kind": "by", "on": on.id, "cases": cases, "default": default}, ty


def _write(ctx, f: n.PersonaField, scope: Scope) -> tuple[dict, Ty]:
    call = f.value
    if len(call.args) != 2 or not isinstance(call.args[0].value, n.Name):
        ctx.error("E1023", call.span, 'write takes a model and a template: write(model, "...")')
        return {"kind": "derive", "expr": {"lit": None}}, STR
    model = call.args[0].value
    if model.id not in ctx.decls["model"]:
        ctx.error("E1003", model.span, f"unknown model `{model.id}`", hint=did_you_mean(model.id, ctx.decls["model"]))
    ty, template = Checker(ctx, scope).expr(call.args[1].value)
    if ty.kind not in ("str", "any"):
        ctx.error("E1023", call.args[1].span, "the second argument of write is the prompt text")
    fields = ctx.persona_fields.get(scope.persona, {})
    for name in f.reuse_per or ():
        if name not in fields:
            ctx.error("E1027", f.span, f"`reuse per` names `{name}`, which is not a field of this persona",
                      hint=did_you_mean(name, fields))
        else:
            scope.refs.add(name)
    if f.reuse_per is not None:
        used = persona_refs(template)
        missing = sorted(used - set(f.reuse_per))
        if missing:
            ctx.warning("W1001", f.span, f"the prompt uses {', '.join(missing)}, not in `reuse per`",
                        hint="agents sharing a text may differ in those fields; add them to reuse per")
    return {"kind": "write", "model": model.id, "template": template,
            "reuse_per": list(f.reuse_per) if f.reuse_per is not None else None}, STR


def persona_refs(ir) -> set:
    """The persona fields a plan expression reads directly (not through a group or neighbours)."""
    out = set()
    if isinstance(ir, dict):
        if ir.get("src") == "persona" and "col" in ir and "via" not in ir:
            out.add(ir["col"])
        for v in ir.values():
            out |= persona_refs(v)
    elif isinstance(ir, list):
        for v in ir:
            out |= persona_refs(v)
    return out


def _table(ctx, call: n.Call) -> tuple[dict, Ty]:
    if not call.args or call.args[0].name or not isinstance(call.args[0].value, n.Literal) \
            or call.args[0].value.kind != "str":
        ctx.error("E1025", call.span, 'sample takes a file name: sample("people.csv")')
        return {"kind": "table", "path": "", "mode": "replace"}, ANY
    rel = call.args[0].value.value
    base = os.path.dirname(call.span.file)
    path = os.path.normpath(os.path.join(base, rel))
    mode = "replace"
    for arg in call.args[1:]:
        _, v, ok = constant(ctx, arg.value, f"`{arg.name}`")
        if arg.name == "replace" and ok and isinstance(v, bool):
            mode = "replace" if v else "without"
        elif arg.name == "order" and ok and isinstance(v, bool):
            mode = "in_order" if v else mode
        else:
            ctx.error("E1025", arg.span, "sample takes replace = true|false or order = true")
    if not path.endswith((".csv", ".jsonl")):
        ctx.error("E1025", call.args[0].span, "a table is a .csv or .jsonl file")
        return {"kind": "table", "path": path, "mode": mode}, ANY
    columns = _table_columns(ctx, path, call.args[0].span)
    ty = Ty("record", fields=tuple(sorted(columns.items()))) if columns else ANY
    return {"kind": "table", "path": path, "mode": mode, "columns": {k: to_json(v) for k, v in sorted(columns.items())}}, ty


def _table_columns(ctx, path: str, span: n.Span) -> dict[str, Ty]:
    """Column names and types from the first rows of a table file (checked when it exists)."""
    if not os.path.exists(path):
        ctx.error("E1025", span, f"table file `{path}` does not exist", hint="paths are relative to the scenario file")
        return {}
    rows = []
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            if path.endswith(".csv"):
                reader = csv.DictReader(fh)
                for i, row in enumerate(reader):
                    # DictReader files extra cells under None and fills missing ones with None
                    if None in row or None in row.values():
                        width = len(row) - 1 + len(row[None]) if None in row else sum(v is not None for v in row.values())
                        ctx.error("E1025", span, f"line {reader.line_num} of `{path}` has {width} cells; "
                                  f"the header has {len(reader.fieldnames)} columns")
                        return {}
                    rows.append({k: table_cell(v) for k, v in row.items()})
                    if i >= 200:
                        break
            else:
                for i, line in enumerate(fh):
                    if line.strip():
                        rows.append(json.loads(line))
                    if i >= 200:
                        break
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        ctx.error("E1025", span, f"cannot read table `{path}`: {e}")
        return {}
    if not rows:
        ctx.error("E1025", span, f"table `{path}` has no rows")
        return {}
    cols: dict[str, list] = {}
    for row in rows:
        for k, v in row.items():
            cols.setdefault(k, []).append(v)
    return {k: unify_all([type_of_value(v) for v in vs]) for k, vs in cols.items()}


# ------------------------------------------------------------------ agents
def check_agents(ctx: Context) -> None:
    """Resolve `extends`, check persona, model and memory; type-check system prompts and state."""
    resolved: dict[str, dict] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict | None:
        if name in resolved:
            return resolved[name]
        decl = ctx.decls["agent"][name]
        base: dict = {"settings": {}, "state": {}, "memory": None}
        if decl.extends:
            if decl.extends in chain or decl.extends == name:
                cycle = chain[chain.index(decl.extends):] if decl.extends in chain else ()
                ctx.error("E1036", decl.extends_span, "agents extend each other in a cycle" if cycle else f"agent `{name}` extends itself",
                          hint=f"the cycle: {' -> '.join(cycle + (name, decl.extends))}")
                base["broken"] = True
            elif decl.extends not in ctx.decls["agent"]:
                ctx.error("E1036", decl.extends_span, f"unknown agent `{decl.extends}`",
                          hint=did_you_mean(decl.extends, set(ctx.decls["agent"]) - {name}) or
                          f"declare it: agent {decl.extends} {{ ... }}")
                base["broken"] = True
            else:
                parent = resolve(decl.extends, chain + (name,))
                if parent:
                    base = {"settings": dict(parent["settings"]), "state": dict(parent["state"]), "memory": parent["memory"],
                            "broken": parent.get("broken", False)}
        for s in decl.settings:
            base["settings"][s.name] = s
        for st in decl.state:
            base["state"][st.name] = st
        if decl.memory is not None:
            base["memory"] = decl.memory
        resolved[name] = base
        return base

    for name, decl in ctx.decls["agent"].items():
        info = resolve(name, ())
        settings = info["settings"]
        allowed = ("persona", "model", "system", "description")
        for key, s in settings.items():
            if key not in allowed:
                ctx.error("E1009", s.name_span, f"an agent has no setting `{key}`",
                          hint=did_you_mean(key, allowed + ("memory", "state")) or
                          "settings: persona, model, system, memory = last N, state NAME: TYPE = DEFAULT")
        persona = _ref(ctx, settings.get("persona"), "persona", "E1004")
        model = _ref(ctx, settings.get("model"), "model", "E1003")
        if settings.get("model") is None and not info.get("broken"):  # a broken `extends` was reported already
            ctx.error("E1022", decl.name_span, f"agent `{name}` needs a model", hint="model = NAME, a model declared in this scenario")
        memory = 0
        if info["memory"] is not None:
            _, memory, ok = constant(ctx, info["memory"], "memory")
            if not ok or not isinstance(memory, int) or isinstance(memory, bool) or not 0 <= memory <= 1000:
                ctx.error("E1022", info["memory"].span, "memory = last N takes a whole number from 0 to 1000")
                memory = 0
        state = {}
        for st_name, st in info["state"].items():
            ty = output_type(ctx, st.type)
            extra = {"out_of_range": "clip"} if st.clip else {}
            if st.clip and ty.low is None and ty.high is None:
                ctx.error("E1010", st.span, f"`clip` keeps `{st_name}` inside its range, and it has none",
                          hint=f"state {st_name}: {describe(ty)} in LOW..HIGH clip = ...")
            if _per_agent(st.default):  # `= persona.income * 0.1`: typed once the agent's fields are known
                state[st_name] = {"type": ty, "default": _start_value(ty), "span": st.span, "node": st.default, **extra}
                continue
            vty, default, ok = constant(ctx, st.default, f"the default of `{st_name}`")
            if ok and ty.kind == "enum" and vty.kind in ("str", "int", "float") and default not in ty.values:
                ctx.error("E1010", st.default.span, f"{default!r} is not one of the values of {describe(ty)}")
            elif ok and not (ty.kind == "enum" and default in ty.values) and not assignable(ty, vty):
                ctx.error("E1010", st.default.span, f"state `{st_name}` is {describe(ty)}, but its default is {describe(vty)}")
            if ok and not _in_range(default, ty):
                ctx.error("E1010", st.default.span, f"the default {default!r} is outside {describe(ty)}")
            if ok and ty.kind == "float" and isinstance(default, int):
                default = float(default)
            state[st_name] = {"type": ty, "default": default, "span": st.span, **extra}
        ctx.agents[name] = {"name": name, "persona": persona, "model": model, "memory": memory, "state": state,
                            "system": settings.get("system"), "span": decl.span, "name_span": decl.name_span}


def _per_agent(e) -> bool:
    """Does a start value read the agent (`persona.x`, `self.id`) or draw (`random()`)? Then it is
    computed per agent at start."""
    if isinstance(e, n.Name):
        return e.id in ("persona", "self")
    if isinstance(e, n.Call) and isinstance(e.func, n.Name) and e.func.id in ("random", "choice"):
        return True  # a draw per agent
    if isinstance(e, n.Node):
        return any(_per_agent(getattr(e, f.name)) for f in dataclasses.fields(e) if f.name != "span")
    if isinstance(e, (tuple, list)):
        return any(_per_agent(v) for v in e)
    return False


def _start_value(ty: Ty):
    """The placeholder start of a field computed per agent: a value of its type, inside its range."""
    if ty.kind == "enum":
        return ty.values[0]
    zero = {"int": 0, "float": 0.0, "bool": False, "str": ""}.get(ty.kind)
    if ty.kind in ("int", "float") and ty.low is not None and zero < ty.low:
        return ty.low if ty.kind == "int" else float(ty.low)
    if ty.kind in ("int", "float") and ty.high is not None and zero > ty.high:
        return ty.high if ty.kind == "int" else float(ty.high)
    return zero if zero is not None else ({"list": []}.get(ty.kind))


def _state_json(st: dict) -> dict:
    """A state field as the plan holds it: type, start (a constant, or `default_expr`), out_of_range."""
    out = {"type": to_json(st["type"]), "default": st["default"]}
    if st.get("expr") is not None:
        out["default_expr"] = st["expr"]
    if st.get("out_of_range"):
        out["out_of_range"] = st["out_of_range"]
    return out


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


def _ref(ctx, setting: n.Setting | None, kind: str, code: str) -> str | None:
    if setting is None:
        return None
    if not isinstance(setting.value, n.Name):
        ctx.error(code, setting.value.span, f"{kind} = NAME names a {kind} declared in this scenario")
        return None
    name = setting.value.id
    if name not in ctx.decls[kind]:
        ctx.error(code, setting.value.span, f"unknown {kind} `{name}`", label=f"no {kind} of this name",
                  hint=did_you_mean(name, ctx.decls[kind]) or f"declare it: {kind} {name} {{ ... }}")
        return None
    return name


# ------------------------------------------------------------------ populations and groups
def check_populations(ctx: Context) -> None:
    """Sizes, mixtures (exact counts per kind), the fields each population's agents carry."""
    outputs = _collect_outputs(ctx)
    for name, decl in ctx.decls["population"].items():
        _, size, ok = constant(ctx, decl.size, "a population's size")
        if ok and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            ctx.error("E1029", decl.size.span, f"a population's size must be a whole number >= 1, not {size!r}")
            ok = False
        size = size if ok else 1
        if ok and size > 2**31 - 1:
            ctx.error("E1029", decl.size.span, "a population holds at most 2,147,483,647 agents")
            size = 1
        kinds = []
        if decl.agent is not None:
            if decl.agent not in ctx.agents:
                ctx.error("E1005", decl.agent_span, f"unknown agent `{decl.agent}`",
                          hint=did_you_mean(decl.agent, ctx.agents) or f"declare it: agent {decl.agent} {{ ... }}")
            else:
                kinds.append((decl.agent, 1.0))
        else:
            for share in decl.mixture:
                if share.agent not in ctx.agents:
                    ctx.error("E1005", share.span, f"unknown agent `{share.agent}`", hint=did_you_mean(share.agent, ctx.agents))
                    continue
                _, w, okw = constant(ctx, share.share, "a share")
                if not okw or not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
                    ctx.error("E1028", share.share.span, "a share is a number >= 0, like 30% or 0.3")
                    continue
                if share.agent in [k for k, _ in kinds]:
                    ctx.error("E1028", share.span, f"agent `{share.agent}` appears twice in the mixture")
                    continue
                kinds.append((share.agent, float(w)))
            if kinds and sum(w for _, w in kinds) <= 0:
                ctx.error("E1028", decl.span, "the shares add up to zero")
                kinds = []
        counts = _apportion(size, [w for _, w in kinds])
        start, mixture = 0, []
        for (agent, w), count in zip(kinds, counts):
            mixture.append({"agent": agent, "share": w / (sum(x for _, x in kinds) or 1), "start": start, "count": count})
            start += count
        # Kinds may have personas of their own: the population sees every field of them (missing for
        # an agent whose persona lacks it); a field two personas share must have one type.
        own = list(dict.fromkeys(ctx.agents[a]["persona"] for a, _ in kinds))
        persona = own[0] if own else None
        fields: dict[str, FieldInfo] = {}
        for p in own:
            for fname, fty in ctx.persona_fields.get(p, {}).items():
                if fname in fields and fields[fname].ty != fty:
                    joined = _join_field_types(fields[fname].ty, fty)
                    if joined is None:
                        ctx.error("E1028", decl.span, f"persona field `{fname}` is {describe(fields[fname].ty)} in one "
                                  f"kind's persona and {describe(fty)} in `{p}`",
                                  hint="give the field one type in every persona of the mixture, or another name")
                    else:
                        fields[fname] = FieldInfo(joined, "persona", decl.span)
                fields.setdefault(fname, FieldInfo(fty, "persona", decl.span))
        if len(own) > 1:
            written = [p for p in own if p and any(f.get("kind") == "write"
                                                   for f in ctx.plan["personas"].get(p, {}).get("fields", []))]
            if written:
                ctx.error("E1028", decl.span, f"persona `{written[0]}` has text written by a model, and the kinds of "
                          "this mixture have different personas: not supported yet",
                          hint="give the kinds one persona, or put them in populations of their own")
        state_types: dict[str, dict] = {}
        for agent, _ in kinds:
            for sname, st in ctx.agents[agent]["state"].items():
                if sname in state_types and state_types[sname]["type"] != st["type"]:
                    ctx.error("E1028", st["span"], f"state `{sname}` has different types in this population's agent kinds")
                elif sname in state_types and state_types[sname].get("out_of_range") != st.get("out_of_range"):
                    ctx.error("E1028", st["span"], f"state `{sname}` is clipped in one agent kind of this population "
                              "and not in another", hint="write `clip` in every kind, or in none")
                if sname in state_types and st.get("node") is not None and state_types[sname].get("node") is None:
                    state_types[sname] = st  # the population computes starts when any kind does
                state_types.setdefault(sname, st)
        for sname, st in state_types.items():
            if sname not in fields:  # a clash with a persona field is reported once, per agent kind, below
                fields[sname] = FieldInfo(st["type"], "state", st["span"])
        for oname, (oty, ospan) in outputs.get(name, {}).items():
            if oname in fields:
                ctx.error("E1018", ospan, f"the output `{oname}` has the name of a {fields[oname].source} field of `{name}`",
                          hint="name the output differently")
                continue
            fields[oname] = FieldInfo(oty, "output", ospan)
        ctx.population_fields[name] = fields
        ctx.populations[name] = {
            "name": name, "size": size, "persona": persona, "mixture": mixture, "span": span_json(decl.span),
            "state": {k: _state_json(v) for k, v in sorted(state_types.items())},  # starts: lower_state_starts
            "outputs": {k: to_json(t) for k, (t, _) in sorted(outputs.get(name, {}).items())},
        }
    # Agent kinds seen on their own (for system prompts): persona + state.
    for agent, info in ctx.agents.items():
        fields = {f: FieldInfo(t, "persona", info["span"]) for f, t in ctx.persona_fields.get(info["persona"], {}).items()}
        for sname, st in info["state"].items():
            if sname in fields:  # the persona field keeps its name: only this error, no false ones after it
                ctx.error("E1001", st["span"], f"state `{sname}` has the name of a field of persona `{info['persona']}`",
                          hint=f"name the state differently, e.g. state my_{sname}: ...")
                continue
            fields[sname] = FieldInfo(st["type"], "state", st["span"])
        ctx.population_fields["agent:" + agent] = fields


def _join_field_types(a: Ty, b: Ty) -> Ty | None:
    """One type for a persona field two kinds' personas both have: the same kind, the ranges (or
    enum values) joined; None when the kinds differ (a number in one, text in the other)."""
    if a.kind != b.kind or a.kind in ("list", "record"):
        return None
    if a.kind == "enum":
        return Ty("enum", values=tuple(dict.fromkeys(a.values + b.values)))
    low = None if a.low is None or b.low is None else min(a.low, b.low)
    high = None if a.high is None or b.high is None else max(a.high, b.high)
    return Ty(a.kind, low=low, high=high)


def _apportion(total: int, weights: list[float]) -> list[int]:
    """Split `total` by weights into whole counts that add up exactly (largest remainder)."""
    if not weights:
        return []
    s = sum(weights) or 1.0
    exact = [total * w / s for w in weights]
    counts = [math.floor(x) for x in exact]
    rest = total - sum(counts)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:rest]:
        counts[i] += 1
    return counts


def _collect_outputs(ctx: Context) -> dict[str, dict[str, tuple[Ty, n.Span]]]:
    """Every ask's output, per population; the same output asked twice must keep its type."""
    out: dict[str, dict[str, tuple[Ty, n.Span]]] = {}

    def walk(stmts):
        for s in stmts:
            if isinstance(s, n.Ask):
                ty = output_type(ctx, s.output.type)
                prev = out.setdefault(s.population, {}).get(s.output.name)
                if prev and prev[0] != ty:
                    ctx.error("E1018", s.output.span, f"`{s.output.name}` was asked before as {describe(prev[0])}, now as {describe(ty)}",
                              hint=f"first asked at line {prev[1].line}; use one type, or another name")
                elif not prev:
                    out[s.population][s.output.name] = (ty, s.output.span)
            for child in _children(s):
                walk(child)

    for wf in ctx.workflow:
        walk(wf.body.body)
    return out


def _children(s):
    if isinstance(s, (n.Repeat, n.For)):
        yield s.body.body
    elif isinstance(s, n.If):
        for _, block in s.branches:
            yield block.body
        if s.orelse:
            yield s.orelse.body


def check_agent_prompts(ctx: Context) -> None:
    """Type-check each agent's system prompt against its persona and state (and state starts)."""
    lower_state_starts(ctx)
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
            "state": {k: _state_json(v) for k, v in sorted(info["state"].items())},
        }


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


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
