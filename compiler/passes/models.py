"""Pass 4, models: each model block checked against its provider's schema, with prices and key names.

Reads: ctx.decls["model"], ctx.params, ctx.batch (`--batch`), ctx.prices (`--prices FILE`). Adds: ctx.models (the plan's `models` part).
"""
from __future__ import annotations

import functools
import json
from importlib import resources

import jsonschema

from populace.dsl import nodes as n
from populace.dsl.diagnostics import did_you_mean

from ..context import Context, span_json
from ..prices import BUILT_IN
from ..values import article, constant


DEFAULT_PRICES = BUILT_IN  # the built-in table (compiler/prices.py); `--prices FILE` overrides it
BATCH_DISCOUNT = 0.5  # Anthropic Message Batches and OpenAI Batch: 50% of the list price
DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
SECRET_SETTINGS = ("api_key", "key", "token", "secret", "password", "authorization")


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
                    ctx.error("E1019", spans[extra].name_span, f"{article(provider)} {provider} model has no setting `{extra}`",
                              hint=did_you_mean(extra, schema["properties"]) or
                              f"settings: {', '.join(sorted(schema['properties']))}")
            elif err.validator == "required":
                missing = ", ".join(f"`{k}`" for k in err.validator_value if k not in settings)
                ctx.error("E1019", decl.name_span, f"{article(provider)} {provider} model needs {missing}",
                          hint=_required_hint(provider))
            else:
                span = spans[key].value.span if key in spans else decl.name_span
                ctx.error("E1019", span, f"`{key}`: {_schema_words(err)}")
        if provider in DEFAULT_KEY_ENV:
            settings.setdefault("api_key_env", DEFAULT_KEY_ENV[provider])
            if ctx.batch:
                settings.setdefault("batch", True)  # `--batch`; a model's own `batch = false` stands
        table = ctx.prices if ctx.prices is not None else DEFAULT_PRICES
        price = settings.pop("price", None) or table.get(settings.get("name", ""))
        if price and settings.get("batch"):
            # Both providers' batch APIs bill half the list price, cache reads and writes included: the
            # plan carries the price actually paid, so cost, budget and explain need no second rule.
            price = {k: v * BATCH_DISCOUNT for k, v in price.items()}
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
