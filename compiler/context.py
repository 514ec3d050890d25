"""The compiler's shared state: diagnostics, symbol tables and the plan being built.

In: a dsl Program and param overrides. Out: a Context that each pass reads and extends in order.
Symbol tables hold what later passes need to type-check (field types, declaration spans); the
`plan` dict holds the lowered, JSON-ready parts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from populace.dsl import nodes as n
from populace.dsl.diagnostics import Reporter
from populace.dsl.load import Program

from .types import Ty


@dataclass
class FieldInfo:
    ty: Ty
    source: str  # persona | state | output
    span: n.Span


@dataclass
class Context:
    program: Program
    overrides: list[str]
    reporter: Reporter
    batch: bool = False  # `--batch`: every Anthropic and OpenAI model uses its provider's batch API
    prices: dict | None = None  # `--prices FILE`: the prices table (compiler/prices.py); None: the built-in one
    decls: dict[str, list] = field(default_factory=dict)  # kind -> declarations from every module
    scenario: n.ScenarioDecl | None = None
    params: dict[str, tuple[object, Ty]] = field(default_factory=dict)
    models: dict[str, dict] = field(default_factory=dict)
    persona_fields: dict[str, dict[str, Ty]] = field(default_factory=dict)  # persona -> field -> type
    agents: dict[str, dict] = field(default_factory=dict)  # agent -> resolved settings
    populations: dict[str, dict] = field(default_factory=dict)
    population_fields: dict[str, dict[str, FieldInfo]] = field(default_factory=dict)
    groups: dict[str, dict] = field(default_factory=dict)
    environments: dict[str, dict] = field(default_factory=dict)
    env_fields: dict[str, dict[str, Ty]] = field(default_factory=dict)
    extension_kinds: dict[str, object] = field(default_factory=dict)  # kind -> extensions.KindSpec
    extra_sources: dict[str, str] = field(default_factory=dict)  # extension .py next to the scenario -> sha256
    extensions_failed: bool = False  # an extension module was reported: unknown kinds are not reported again
    workflow: list = field(default_factory=list)
    plan: dict = field(default_factory=dict)
    step_ids: dict[str, int] = field(default_factory=dict)

    def error(self, code: str, span: n.Span, message: str, *, label: str = "", hint: str = "") -> None:
        self.reporter.error(code, span, message, label=label, hint=hint)

    def warning(self, code: str, span: n.Span, message: str, *, label: str = "", hint: str = "") -> None:
        self.reporter.warning(code, span, message, label=label, hint=hint)


def span_json(span: n.Span) -> dict:
    return {"file": span.file, "line": span.line, "column": span.column,
            "end_line": span.end_line, "end_column": span.end_column}


class Quiet:
    """A Context stand-in that swallows diagnostics: for probing types without reporting twice."""

    def __init__(self, ctx: Context):
        self._ctx = ctx

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def error(self, *args, **kwargs) -> None:
        pass

    def warning(self, *args, **kwargs) -> None:
        pass
