"""Syntax tree of the scenario language: frozen, slotted dataclasses, each with a span.

In: nothing (pure data). Out: the node classes that dsl.build creates and that the compiler
reads. No behaviour lives on nodes; rewrites use dataclasses.replace.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

_NODE = dict(frozen=True, slots=True, kw_only=True)


@dataclass(**_NODE)
class Span:
    """A region of a source file: 1-based lines and columns, end inclusive of its last char + 1."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


NO_SPAN = Span(file="<none>", line=1, column=1, end_line=1, end_column=1)


@dataclass(**_NODE)
class Node:
    span: Span = field(default=NO_SPAN, compare=False, repr=False)


# ----------------------------------------------------------------- expressions
@dataclass(**_NODE)
class Expr(Node):
    pass


@dataclass(**_NODE)
class Literal(Expr):
    """A number, string, bool, none, duration (seconds, float) or amount of dollars (`25usd`, float)
    written in the source."""

    value: object
    kind: str  # "int" | "float" | "str" | "bool" | "none" | "percent" | "duration" | "usd"
    text: str = ""  # the source text, kept so the formatter prints `1_000_000` back as written


@dataclass(**_NODE)
class Name(Expr):
    id: str


@dataclass(**_NODE)
class Attr(Expr):
    value: Expr
    attr: str


@dataclass(**_NODE)
class Index(Expr):
    value: Expr
    index: Expr


@dataclass(**_NODE)
class Arg(Node):
    """One call argument: positional (`name` and `key` None), keyword (`name=`) or pair (`key: value`)."""

    value: Expr
    name: str | None = None
    key: Expr | None = None


@dataclass(**_NODE)
class Call(Expr):
    func: Expr
    args: tuple[Arg, ...] = ()


@dataclass(**_NODE)
class BinOp(Expr):
    op: str  # + - * / // % ** == != < <= > >= and or in not in
    left: Expr
    right: Expr


@dataclass(**_NODE)
class UnaryOp(Expr):
    op: str  # - not
    operand: Expr


@dataclass(**_NODE)
class IfExp(Expr):
    test: Expr
    then: Expr
    orelse: Expr


@dataclass(**_NODE)
class Piped(Expr):
    """`value | name(args)`: a filter, as in templates (`{{ x | round(2) }}`); means name(value, args)."""

    value: Expr
    name: str
    args: tuple[Arg, ...] = ()
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class Filtered(Expr):
    """`value where cond` inside an aggregate's parentheses: only the agents for whom cond holds."""

    value: Expr
    where: Expr


@dataclass(**_NODE)
class ListLit(Expr):
    items: tuple[Expr, ...] = ()


@dataclass(**_NODE)
class RecordLit(Expr):
    fields: tuple[tuple[str, Expr], ...] = ()


@dataclass(**_NODE)
class Template(Expr):
    """A string with `{{ expr }}` interpolations: parts are str (literal text) or Expr."""

    parts: tuple[Union[str, Expr], ...] = ()
    long: bool = False  # written as a triple-quoted string


# ----------------------------------------------------------------- types
@dataclass(**_NODE)
class TypeExpr(Node):
    """An output, state or param type: int/float (with range), bool, str, enum(...), list[T], {records}."""

    name: str  # int float bool str enum list record, or any other name the compiler rejects
    low: Expr | None = None
    high: Expr | None = None
    args: tuple[Arg, ...] = ()
    item: TypeExpr | None = None
    fields: tuple[tuple[str, TypeExpr], ...] = ()
    form: str = "simple"  # simple | call | generic | record


# ----------------------------------------------------------------- declarations
@dataclass(**_NODE)
class Setting(Node):
    name: str
    value: Expr
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class Param(Node):
    name: str
    type: TypeExpr | None
    default: Expr
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class Decl(Node):
    name: str
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class ScenarioDecl(Decl):
    settings: tuple[Setting, ...] = ()
    params: tuple[Param, ...] = ()
    order: tuple[str, ...] = ()  # "setting:NAME" / "param:NAME" in source order, for the formatter


@dataclass(**_NODE)
class Import(Node):
    path: str


@dataclass(**_NODE)
class ModelDecl(Decl):
    settings: tuple[Setting, ...] = ()


@dataclass(**_NODE)
class Case(Node):
    key: object  # str, int, float or bool; "_" NAME for the default case is spelled `else`
    key_text: str
    value: Expr


@dataclass(**_NODE)
class PersonaField(Node):
    """`name ~ distribution [cases] [reuse per (...)]` (sampled) or `name = expr` (derived)."""

    name: str
    value: Expr
    sampled: bool
    cases: tuple[Case, ...] | None = None
    reuse_per: tuple[str, ...] | None = None
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class PersonaDecl(Decl):
    fields: tuple[PersonaField, ...] = ()


@dataclass(**_NODE)
class StateField(Node):
    name: str
    type: TypeExpr
    default: Expr
    clip: bool = False  # `in LOW..HIGH clip`: updates are clipped into the range instead of failing the run
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class AgentDecl(Decl):
    extends: str | None = None
    settings: tuple[Setting, ...] = ()
    memory: Expr | None = None
    state: tuple[StateField, ...] = ()
    extends_span: Span | None = field(default=None, compare=False, repr=False)
    order: tuple[str, ...] = ()  # "setting:NAME" / "memory" / "state:NAME", for the formatter


@dataclass(**_NODE)
class Share(Node):
    agent: str
    share: Expr


@dataclass(**_NODE)
class PopulationDecl(Decl):
    size: Expr
    agent: str | None = None  # one agent kind ...
    mixture: tuple[Share, ...] = ()  # ... or a mixture of kinds by share
    agent_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(**_NODE)
class GroupDecl(Decl):
    """`group POPULATION by SIZE-or-FIELD as NAME`; `name` is the group set's name."""

    population: str
    by: Expr
    population_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class EnvField(Node):
    name: str
    type: TypeExpr | None
    value: Expr
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class EnvironmentDecl(Decl):
    kind: str | None = None  # board when None
    kind_args: tuple[Arg, ...] = ()
    fields: tuple[EnvField, ...] = ()
    has_body: bool = True
    kind_span: Span | None = field(default=None, compare=False, repr=False)


# ----------------------------------------------------------------- workflow
@dataclass(**_NODE)
class Stmt(Node):
    pass


@dataclass(**_NODE)
class Block(Node):
    body: tuple[Stmt, ...] = ()


@dataclass(**_NODE)
class Repeat(Stmt):
    count: Expr
    var: str | None
    body: Block


@dataclass(**_NODE)
class For(Stmt):
    var: str
    iterable: Expr
    body: Block


@dataclass(**_NODE)
class If(Stmt):
    branches: tuple[tuple[Expr, Block], ...]  # if / else if ...
    orelse: Block | None = None


@dataclass(**_NODE)
class Stop(Stmt):
    """`stop when COND` ends the run; `break when COND` ends the innermost loop."""

    condition: Expr
    scope: str  # "run" | "loop"


@dataclass(**_NODE)
class Output(Node):
    name: str
    type: TypeExpr
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class Ask(Stmt):
    population: str
    prompt: Template
    output: Output
    where: Expr | None = None
    model: str | None = None
    in_order: bool = False  # `ask P in order`: one agent after another, each seeing the answers before it
    verbatim: bool = False  # the prompt as written: no reply instruction appended
    population_span: Span = field(default=NO_SPAN, compare=False, repr=False)
    model_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(**_NODE)
class Tell(Stmt):
    target: Expr
    message: Template
    sender: str | None = None
    where: Expr | None = None
    sender_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(**_NODE)
class Broadcast(Stmt):
    message: Template
    population: str | None = None
    population_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(**_NODE)
class Let(Stmt):
    name: str
    value: Expr
    name_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class Assign(Stmt):
    target: Expr
    op: str  # = += -= *= /=
    value: Expr
    where: Expr | None = None


@dataclass(**_NODE)
class RecordItem(Node):
    name: str | None
    value: Expr


@dataclass(**_NODE)
class Record(Stmt):
    items: tuple[RecordItem, ...]
    table: str | None = None  # `record "prices" ...`: a table of its own
    by: tuple[RecordItem, ...] = ()  # `... by players.kind`: one row per value


@dataclass(**_NODE)
class Regroup(Stmt):
    """`regroup G`: draw group set G's random groups anew."""

    group: str
    group_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class Snapshot(Stmt):
    """`snapshot P`: write every agent of population P (id, kind, state, answers) at this point."""

    population: str
    population_span: Span = field(default=NO_SPAN, compare=False, repr=False)


@dataclass(**_NODE)
class CallStmt(Stmt):
    call: Call


@dataclass(**_NODE)
class WorkflowDecl(Node):
    body: Block


# ----------------------------------------------------------------- files
@dataclass(**_NODE)
class Module(Node):
    """One parsed file: its declarations in source order."""

    path: str
    decls: tuple[Node, ...] = ()
