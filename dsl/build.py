"""Turn Lark trees into dsl.nodes; the only module that sees lark.Tree.

In: a lark.Tree from dsl.parser (positions propagated) and the file name. Out: a nodes.Module, or
diagnostics for what the grammar accepts but the language does not (bad escapes, a bad `{{ }}`).
Strings holding `{{ ... }}` become Template nodes: each interpolation is parsed with the grammar's
`expr` start, and its span points inside the string, so an error there names the exact column.
`parse_module` is the fast way for text without errors: the parser calls the same rule methods
while it parses (dsl.parser.parse_direct), and no lark.Tree is made.
"""
from __future__ import annotations

import functools
import re
import textwrap
from dataclasses import fields

from lark import Token, Transformer, Tree

from . import nodes as n
from .diagnostics import Diagnostic
from .nodes import Span
from .parser import parse_direct, parse_text

_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "{": "{", "}": "}", "r": "\r", "0": "\0"}


class BuildError(Exception):
    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def _number(text: str) -> str:
    return text.replace("_", "")


_SPELLINGS = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def escape_text(text: str, following: str = "") -> str:
    """Spell text for inside double quotes: the inverse of _ESCAPES.

    `following` is the character printed right after the text: a `{` before another `{`
    would open an interpolation, so it is written `\\{`.
    """
    out = _TO_SPELL.sub(lambda m: _SPELLINGS.get(m.group(), "\\{"), text)
    if following == "{" and text.endswith("{"):
        out = out[:-1] + "\\{"
    return out


_TO_SPELL = re.compile(r'[\\"\n\t\r\0]|\{(?=\{)')
_PLAIN_RUN = re.compile(r"[^\\{]+")  # template text with nothing to decode: copied in one step


def quote_string(value: str) -> str:
    """The canonical spelling of a plain string, as `populace fmt` prints it."""
    return '"' + escape_text(value) + '"'


class _SlowPath(Exception):
    """The fast path met something it leaves to the diagnosing path (an error, most likely)."""


class _Builder:
    """Bottom-up: every rule method returns a node (or a small tuple the parent unpacks).

    A rule method is called with the rule's extent, (line, column, end_line, end_column) or None,
    and its children as a lark.Tree would hold them: by _FromTree, or by the parser itself.
    `fast`: interpolations go through parse_direct too, and any error raises _SlowPath.
    """

    def __init__(self, file: str, line_offset: int = 0, col_offset: int = 0, fast: bool = False):
        self.file = file
        self.line_offset = line_offset
        self.col_offset = col_offset
        self.fast = fast
        self.diagnostics: list[Diagnostic] = []

    # -------------------------------------------------------------- positions
    def span(self, extent) -> Span:
        if extent is None:
            return n.NO_SPAN
        return self._pos(*extent)

    def tspan(self, tok: Token) -> Span:
        return self._pos(tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + len(tok))

    def _pos(self, line, col, end_line, end_col) -> Span:
        if self.line_offset or self.col_offset:  # inside a template: move to where the text sits in the file
            if line == 1:
                col += self.col_offset
            if end_line == 1:
                end_col += self.col_offset
            line += self.line_offset
            end_line += self.line_offset
        return Span(file=self.file, line=line, column=col, end_line=end_line, end_column=end_col)

    # -------------------------------------------------------------- top level
    def start(self, extent, children):
        return [c for c in children if c is not None]

    def import_decl(self, extent, c):
        return n.Import(path=self.plain_string(c[0]), span=self.span(extent))

    def setting(self, extent, c):
        return n.Setting(name=str(c[0]), value=c[1], span=self.span(extent), name_span=self.tspan(c[0]))

    def param(self, extent, c):
        return n.Param(name=str(c[0]), type=c[1], default=c[2], span=self.span(extent), name_span=self.tspan(c[0]))

    def scenario(self, extent, c):
        items = c[1:]
        return n.ScenarioDecl(
            name=str(c[0]), name_span=self.tspan(c[0]), span=self.span(extent),
            settings=tuple(i for i in items if isinstance(i, n.Setting)),
            params=tuple(i for i in items if isinstance(i, n.Param)),
            order=tuple(("param:" if isinstance(i, n.Param) else "setting:") + i.name for i in items),
        )

    def model(self, extent, c):
        return n.ModelDecl(name=str(c[0]), name_span=self.tspan(c[0]), span=self.span(extent), settings=tuple(c[1:]))

    # -------------------------------------------------------------- personas
    def persona(self, extent, c):
        fields = []
        for item in c[1:]:
            if isinstance(item, n.Setting):
                item = n.PersonaField(name=item.name, value=item.value, sampled=False, span=item.span,
                                      name_span=item.name_span)
            fields.append(item)
        return n.PersonaDecl(name=str(c[0]), name_span=self.tspan(c[0]), span=self.span(extent), fields=tuple(fields))

    def sampled(self, extent, c):
        name, value, cases, reuse = c
        return n.PersonaField(name=str(name), value=value, sampled=True, cases=cases, reuse_per=reuse,
                              span=self.span(extent), name_span=self.tspan(name))

    def cases(self, extent, c):
        return tuple(c)

    def case(self, extent, c):
        key_tok, value = c
        key_text, key = self.case_key(key_tok)
        return n.Case(key=key, key_text=key_text, value=value, span=self.span(extent))

    def case_key(self, key):
        if isinstance(key, tuple):  # signed_number
            return key
        tok: Token = key
        if tok.type == "STRING":
            value = self.plain_string(tok)
            return quote_string(value), value
        if tok.type == "TRUE":
            return "true", True
        if tok.type == "FALSE":
            return "false", False
        return str(tok), str(tok)  # a bare name: `else` for the default case, or a category

    def signed_number(self, extent, c):
        sign = "-" if len(c) == 2 else ""
        tok = c[-1]
        text = sign + str(tok)
        value = float(_number(text)) if tok.type == "FLOAT" else int(_number(text))
        return text, value

    def reuse(self, extent, c):
        return tuple(str(t) for t in c)

    # -------------------------------------------------------------- agents
    def agent(self, extent, c):
        name, extends, *items = c
        settings, state, memory, order = [], [], None, []
        for item in items:
            if isinstance(item, n.Setting):
                settings.append(item)
                order.append("setting:" + item.name)
            elif isinstance(item, n.StateField):
                state.append(item)
                order.append("state:" + item.name)
            else:
                memory = item
                order.append("memory")
        return n.AgentDecl(
            name=str(name), name_span=self.tspan(name), span=self.span(extent),
            extends=str(extends) if extends is not None else None,
            extends_span=self.tspan(extends) if extends is not None else None,
            settings=tuple(settings), state=tuple(state), memory=memory, order=tuple(order),
        )

    def extends(self, extent, c):
        return c[0]

    def memory(self, extent, c):
        return c[0]

    def state(self, extent, c):
        return n.StateField(name=str(c[0]), type=c[1], default=c[3], clip=c[2] is not None, span=self.span(extent),
                            name_span=self.tspan(c[0]))

    # -------------------------------------------------------------- populations
    def population(self, extent, c):
        name, size, kind = c
        if isinstance(kind, Token):
            return n.PopulationDecl(name=str(name), name_span=self.tspan(name), span=self.span(extent), size=size,
                                    agent=str(kind), agent_span=self.tspan(kind))
        return n.PopulationDecl(name=str(name), name_span=self.tspan(name), span=self.span(extent), size=size,
                                mixture=kind)

    def mixture(self, extent, c):
        return tuple(c)

    def share(self, extent, c):
        return n.Share(agent=str(c[0]), share=c[1], span=self.span(extent))

    def group_decl(self, extent, c):
        population, by, name = c
        return n.GroupDecl(name=str(name), name_span=self.tspan(name), span=self.span(extent),
                           population=str(population), population_span=self.tspan(population), by=by)

    # -------------------------------------------------------------- environments
    def environment(self, extent, c):
        name, kind, body = c
        kind_name, kind_args, kind_span = (None, (), None) if kind is None else kind
        return n.EnvironmentDecl(
            name=str(name), name_span=self.tspan(name), span=self.span(extent), kind=kind_name,
            kind_args=kind_args, kind_span=kind_span, fields=body or (), has_body=body is not None,
        )

    def kind(self, extent, c):
        return str(c[0]), tuple(c[1] or ()), self.tspan(c[0])

    def env_body(self, extent, c):
        return tuple(c)

    def field(self, extent, c):
        return n.EnvField(name=str(c[0]), type=c[1], value=c[2], span=self.span(extent), name_span=self.tspan(c[0]))

    # -------------------------------------------------------------- workflow
    def workflow(self, extent, c):
        return n.WorkflowDecl(body=c[0], span=self.span(extent))

    def block(self, extent, c):
        return n.Block(body=tuple(c), span=self.span(extent))

    def repeat(self, extent, c):
        count, var, body = c
        return n.Repeat(count=count, var=str(var) if var is not None else None, body=body, span=self.span(extent))

    def for_stmt(self, extent, c):
        return n.For(var=str(c[0]), iterable=c[1], body=c[2], span=self.span(extent))

    def if_stmt(self, extent, c):
        test, body, *rest = c
        orelse = rest.pop() if rest and (rest[-1] is None or isinstance(rest[-1], n.Block)) else None
        branches = [(test, body)] + [r for r in rest]
        return n.If(branches=tuple(branches), orelse=orelse, span=self.span(extent))

    def elif_(self, extent, c):
        return (c[0], c[1])

    def else_(self, extent, c):
        return c[0]

    def stop(self, extent, c):
        return n.Stop(condition=c[0], scope="run", span=self.span(extent))

    def break_stmt(self, extent, c):
        return n.Stop(condition=c[0], scope="loop", span=self.span(extent))

    def ask(self, extent, c):
        population, in_order, where, using, verbatim, prompt, _arrow, output = c
        model, model_span = (None, None) if using is None else using
        return n.Ask(population=str(population), population_span=self.tspan(population), where=where,
                     model=model, model_span=model_span, prompt=self.template(prompt), output=output,
                     in_order=in_order is not None, verbatim=verbatim is not None, span=self.span(extent))

    def in_order(self, extent, c):
        return True

    def where(self, extent, c):
        return c[0]

    def using(self, extent, c):
        return str(c[0]), self.tspan(c[0])

    def output(self, extent, c):
        return n.Output(name=str(c[0]), type=c[1], span=self.span(extent), name_span=self.tspan(c[0]))

    def tell(self, extent, c):
        target, sender, where, message = c
        sender_name, sender_span = (None, None) if sender is None else sender
        return n.Tell(target=target, sender=sender_name, sender_span=sender_span, where=where,
                      message=self.template(message), span=self.span(extent))

    def from_(self, extent, c):
        return str(c[0]), self.tspan(c[0])

    def broadcast(self, extent, c):
        population, message = c
        return n.Broadcast(population=str(population) if population is not None else None,
                           population_span=self.tspan(population) if population is not None else None,
                           message=self.template(message), span=self.span(extent))

    def let(self, extent, c):
        return n.Let(name=str(c[0]), value=c[1], span=self.span(extent), name_span=self.tspan(c[0]))

    def assign(self, extent, c):
        target, op, value, where = c
        return n.Assign(target=target, op=str(op), value=value, where=where, span=self.span(extent))

    def assign_eq(self, extent, c):
        target, value, where = c
        return n.Assign(target=target, op="=", value=value, where=where, span=self.span(extent))

    def record(self, extent, c):
        table, *items = c
        by = items.pop() if items and (items[-1] is None or isinstance(items[-1], tuple)) else None
        return n.Record(items=tuple(items), table=self.plain_string(table) if table is not None else None,
                        by=by or (), span=self.span(extent))

    def record_by(self, extent, c):
        return tuple(c)

    def regroup(self, extent, c):
        return n.Regroup(group=str(c[0]), group_span=self.tspan(c[0]), span=self.span(extent))

    def snapshot(self, extent, c):
        return n.Snapshot(population=str(c[0]), population_span=self.tspan(c[0]), span=self.span(extent))

    def record_item(self, extent, c):
        return n.RecordItem(name=str(c[0]) if c[0] is not None else None, value=c[1], span=self.span(extent))

    def call_stmt(self, extent, c):
        return n.CallStmt(call=c[0], span=self.span(extent))

    # -------------------------------------------------------------- types
    def simple_type(self, extent, c):
        name, rng = c
        low, high = rng if rng is not None else (None, None)
        return n.TypeExpr(name=str(name), low=low, high=high, span=self.span(extent))

    def range(self, extent, c):
        return c[0], c[2]

    def call_type(self, extent, c):
        return n.TypeExpr(name=str(c[0]), args=tuple(c[1] or ()), form="call", span=self.span(extent))

    def generic_type(self, extent, c):
        return n.TypeExpr(name=str(c[0]), item=c[1], form="generic", span=self.span(extent))

    def record_type(self, extent, c):
        return n.TypeExpr(name="record", fields=tuple(c), form="record", span=self.span(extent))

    def type_field(self, extent, c):
        return (str(c[0]), c[1])

    # -------------------------------------------------------------- expressions
    def ifexp(self, extent, c):
        return n.IfExp(then=c[0], test=c[1], orelse=c[2], span=self.span(extent))

    def binop(self, extent, c):
        left, op, right = c
        return n.BinOp(op=str(op), left=left, right=right, span=self.span(extent))

    def not_in(self, extent, c):
        return n.BinOp(op="not in", left=c[0], right=c[3], span=self.span(extent))

    def unop(self, extent, c):
        return n.UnaryOp(op=str(c[0]), operand=c[1], span=self.span(extent))

    def attr(self, extent, c):
        return n.Attr(value=c[0], attr=str(c[1]), span=self.span(extent))

    def index(self, extent, c):
        return n.Index(value=c[0], index=c[1], span=self.span(extent))

    def call(self, extent, c):
        return n.Call(func=c[0], args=tuple(c[1] or ()), span=self.span(extent))

    def piped(self, extent, c):
        value, _pipe, name, args = c
        return n.Piped(value=value, name=str(name), args=tuple(args or ()), name_span=self.tspan(name),
                       span=self.span(extent))

    def filtered(self, extent, c):
        return n.Filtered(value=c[0], where=c[1], span=self.span(extent))

    def args(self, extent, c):
        return tuple(a if isinstance(a, n.Arg) else n.Arg(value=a, span=a.span) for a in c)

    def kwarg(self, extent, c):
        return n.Arg(name=str(c[0]), value=c[1], span=self.span(extent))

    def pair(self, extent, c):
        return n.Arg(key=c[0], value=c[1], span=self.span(extent))

    def int_lit(self, extent, c):
        return n.Literal(value=int(_number(c[0])), kind="int", text=str(c[0]), span=self.span(extent))

    def float_lit(self, extent, c):
        return n.Literal(value=float(_number(c[0])), kind="float", text=str(c[0]), span=self.span(extent))

    def percent_lit(self, extent, c):
        return n.Literal(value=float(_number(c[0][:-1])) / 100, kind="percent", text=str(c[0]), span=self.span(extent))

    def duration_lit(self, extent, c):
        text = str(c[0])
        for unit, factor in (("ms", 0.001), ("min", 60.0), ("h", 3600.0), ("s", 1.0)):
            if text.endswith(unit):
                return n.Literal(value=float(_number(text[: -len(unit)])) * factor, kind="duration", text=text,
                                 span=self.span(extent))
        raise AssertionError(text)  # the grammar's DURATION terminal admits only these units

    def money_lit(self, extent, c):
        text = str(c[0])
        return n.Literal(value=float(_number(text[:-3])), kind="usd", text=text, span=self.span(extent))

    def string_lit(self, extent, c):
        return self.template(c[0], allow_plain=True)

    def true_lit(self, extent, c):
        return n.Literal(value=True, kind="bool", text="true", span=self.span(extent))

    def false_lit(self, extent, c):
        return n.Literal(value=False, kind="bool", text="false", span=self.span(extent))

    def none_lit(self, extent, c):
        return n.Literal(value=None, kind="none", text="none", span=self.span(extent))

    def name(self, extent, c):
        return n.Name(id=str(c[0]), span=self.span(extent))

    def list_lit(self, extent, c):
        return n.ListLit(items=tuple(x for x in c if x is not None), span=self.span(extent))

    def tuple_lit(self, extent, c):
        return n.ListLit(items=tuple(x for x in c if x is not None), span=self.span(extent))

    def record_lit(self, extent, c):
        return n.RecordLit(fields=tuple(c), span=self.span(extent))

    def empty_record(self, extent, c):
        return n.RecordLit(fields=(), span=self.span(extent))

    def record_entry(self, extent, c):
        key = c[0]
        return (self.plain_string(key) if key.type == "STRING" else str(key), c[1])

    # -------------------------------------------------------------- strings and templates
    def plain_string(self, tok: Token) -> str:
        node = self.template(tok, allow_plain=True)
        if isinstance(node, n.Literal):
            return node.value
        self.fail("E0011", node.span, "a `{{ }}` interpolation is not allowed here",
                  hint="this string is a file name or key, not a template")

    def fail(self, code, span, message, *, label="", hint=""):
        raise BuildError(Diagnostic(code=code, message=message, span=span, label=label, hint=hint))

    def template(self, tok, allow_plain: bool = False):
        """Split a string token into text and `{{ expr }}` parts; decode escapes; dedent long strings."""
        if isinstance(tok, n.Expr):  # already built (a STRING reached through string_lit)
            return tok if isinstance(tok, n.Template) else n.Template(parts=(tok.value,), span=tok.span)
        raw = str(tok)
        long = raw.startswith('"""')
        quote = 3 if long else 1
        body = raw[quote:-quote]
        span = self.tspan(tok)
        parts: list = []
        i, text = 0, []
        # Position of body[0] in the file: after the opening quote(s).
        line, col = tok.line, tok.column + quote

        def advance(upto: int):
            nonlocal line, col, i
            chunk = body[i:upto]
            nl = chunk.count("\n")
            if nl:
                line += nl
                col = len(chunk) - chunk.rfind("\n")
            else:
                col += len(chunk)
            i = upto

        while i < len(body):
            ch = body[i]
            if ch == "\\":
                nxt = body[i + 1] if i + 1 < len(body) else ""
                if nxt == "\n":  # a backslash at the end of a line joins it to the next
                    advance(i + 2)
                    continue
                if nxt not in _ESCAPES:
                    self.fail("E0009", self._pos(line, col, line, col + 2), f"unknown escape `\\{nxt}`",
                              label="not an escape", hint='escapes are \\n \\t \\" \\\\ \\{ \\}; write \\\\ for a backslash')
                text.append(_ESCAPES[nxt])
                advance(i + 2)
                continue
            if body.startswith("{{", i):
                end = body.find("}}", i + 2)
                if end < 0:
                    self.fail("E0010", self._pos(line, col, line, col + 2), "unclosed `{{` in a template",
                              label="this `{{` has no `}}`", hint="close the interpolation with `}}`, or write \\{ for a literal brace")
                if text:
                    parts.append("".join(text))
                    text = []
                advance(i + 2)
                source = body[i:end]
                if not source.strip():
                    self.fail("E0010", self._pos(line, col - 2, line, col + 2 + len(source)), "empty `{{ }}` in a template",
                              label="nothing to interpolate", hint="put a name inside, e.g. {{ persona.age }}")
                parts.append(self.sub_expression(source, line, col))
                advance(end + 2)
                continue
            run = _PLAIN_RUN.match(body, i)
            stop = run.end() if run else i + 1
            text.append(body[i:stop])
            advance(stop)
        if text:
            parts.append("".join(text))
        if long:
            parts = _dedent_parts(parts)
        if allow_plain and all(isinstance(p, str) for p in parts):
            # The canonical spelling, not the raw text: however a string was quoted or escaped,
            # equal strings give equal trees (the formatter's round trip relies on it).
            value = "".join(parts)
            return n.Literal(value=value, kind="str", text=quote_string(value), span=span)
        return n.Template(parts=tuple(parts), long=long, span=span)

    def sub_expression(self, source: str, line: int, col: int) -> n.Expr:
        sub = _Builder(self.file, line_offset=line - 1 + self.line_offset,
                       col_offset=col - 1 + (self.col_offset if line == 1 else 0), fast=self.fast)
        if self.fast:
            expr = _simple_reference(source, sub) or parse_direct(source, "expr", sub)
            if expr is None:
                raise _SlowPath(source)
            return expr
        tree, diagnostics = parse_text(source, self.file, start="expr")
        if diagnostics:
            d = diagnostics[0]
            # The sub-parse counted from (1, 1): move its span to where the text sits in the file.
            def move(l, c):
                return (line + l - 1, (col - 1 + c) if l == 1 else c)

            l0, c0 = move(d.span.line, d.span.column)
            l1, c1 = move(d.span.end_line, d.span.end_column)
            message = "the expression is incomplete" if d.code == "E0005" else d.message
            raise BuildError(Diagnostic(code="E0012", message=f"in a template: {message}",
                                        span=Span(file=self.file, line=l0, column=c0, end_line=l1, end_column=c1),
                                        label=d.label, hint="the text between {{ and }} must be one expression"))
        return _FromTree(sub).transform(tree)


class _FromTree(Transformer):
    """Build from a lark.Tree: the diagnosing path, and `--set` values parsed with parse_text."""

    def __init__(self, builder: _Builder):
        super().__init__()
        self.builder = builder

    def __default__(self, data, children, meta):
        extent = None if getattr(meta, "empty", True) else (meta.line, meta.column, meta.end_line, meta.end_column)
        return getattr(self.builder, data)(extent, children)


# `{{ name }}` and `{{ a.b.c }}` are most interpolations: build them without a parse. A keyword
# (`true`, `not`, ...) would lex as something else, so those words take the parser's way.
_SIMPLE_REFERENCE = re.compile(r"([ \t]*)([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)[ \t]*")


@functools.cache
def _keywords() -> frozenset:
    """Every word the grammar spells out as a terminal of its own."""
    from .parser import lark_parser

    word = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
    return frozenset(t.pattern.value for t in lark_parser("expr").terminals
                     if t.pattern.type == "str" and word.fullmatch(t.pattern.value))


# Words the grammar spells out only where no name can stand (`ask p in order`, `ask p verbatim "..."`,
# `state x: float in 0..1 clip`): the contextual lexer reads them as names everywhere else, so a field
# may still be called `order`. They are not reserved.
SOFT_KEYWORDS = frozenset({"order", "verbatim", "clip"})


def keywords() -> frozenset:
    """The language's reserved words (a name must not be one of them)."""
    return _keywords() - SOFT_KEYWORDS


def _simple_reference(source: str, builder: _Builder) -> n.Expr | None:
    """`name` or `a.b.c` as Name and Attr nodes, with the spans the parser would give; else None."""
    match = _SIMPLE_REFERENCE.fullmatch(source)
    if match is None:
        return None
    names = match.group(2).split(".")
    if not _keywords().isdisjoint(names):
        return None
    start = len(match.group(1)) + 1  # columns in the source text, 1-based
    end = start + len(names[0])
    expr: n.Expr = n.Name(id=names[0], span=builder.span((1, start, 1, end)))
    for attr in names[1:]:
        end += 1 + len(attr)
        expr = n.Attr(value=expr, attr=attr, span=builder.span((1, start, 1, end)))
    return expr


def _dedent_parts(parts: list) -> list:
    """Dedent a triple-quoted template like textwrap.dedent, and trim its first and last blank lines."""
    marker = "\x00"  # stands in for each interpolation so dedent sees the whole text; NUL cannot occur in source
    joined = "".join(p if isinstance(p, str) else marker for p in parts)
    if joined.startswith("\n"):
        joined = joined[1:]
    elif joined.startswith("\r\n"):
        joined = joined[2:]
    joined = textwrap.dedent(joined).rstrip(" \t\r\n") if joined.strip() else ""
    exprs = iter(p for p in parts if not isinstance(p, str))
    out: list = []
    for i, piece in enumerate(joined.split(marker)):
        if i:
            out.append(next(exprs))
        if piece:
            out.append(piece)
    return out


def parse_module(text: str, file: str) -> n.Module | None:
    """Parse and build `text` in one pass; None if it has any error (parse_text and build_module word them)."""
    try:
        decls = parse_direct(text, "start", _Builder(file, fast=True))
    except (BuildError, _SlowPath):
        return None
    if decls is None:
        return None
    module = n.Module(path=file, decls=tuple(decls), span=Span(file=file, line=1, column=1, end_line=1, end_column=1))
    if _too_deep(module) is not None:
        return None
    return module


def build_module(tree: Tree, file: str) -> tuple[n.Module | None, list[Diagnostic]]:
    builder = _FromTree(_Builder(file))
    try:
        decls = builder.transform(tree)
    except BuildError as e:
        return None, [e.diagnostic]
    except RecursionError:
        return None, [Diagnostic(code="E0013", message="the file is nested too deeply",
                                 span=Span(file=file, line=1, column=1, end_line=1, end_column=2),
                                 hint="simplify deeply nested expressions")]
    except Exception as e:  # a VisitError wrapping one of ours
        inner = getattr(e, "orig_exc", None)
        if isinstance(inner, BuildError):
            return None, [inner.diagnostic]
        if isinstance(inner, RecursionError):
            return None, [Diagnostic(code="E0013", message="the file is nested too deeply",
                                     span=Span(file=file, line=1, column=1, end_line=1, end_column=2),
                                     hint="simplify deeply nested expressions")]
        raise
    module = n.Module(path=file, decls=tuple(decls), span=Span(file=file, line=1, column=1, end_line=1, end_column=1))
    deep = _too_deep(module)
    if deep is not None:
        return None, [Diagnostic(code="E0013", message="expression nested too deeply", span=deep,
                                 label=f"more than {MAX_EXPRESSION_DEPTH} levels of operators and calls",
                                 hint="split it with `let` into smaller expressions")]
    return module, []


MAX_EXPRESSION_DEPTH = 200  # like parser.MAX_NESTING: every later stage recurses over expressions
_FIELDS: dict[type, tuple[str, ...]] = {}


def _too_deep(module: n.Module) -> Span | None:
    """The span of the outermost expression holding one nested deeper than MAX_EXPRESSION_DEPTH, or None.

    `1 + 1 + ... + 1` is as deep as it is long; iterative, so the check itself cannot overflow.
    """
    # Only nodes and tuples are pushed (names, numbers and strings have nothing below them), in the
    # same order as ever, so the expression found first is the same.
    branches = (n.Node, tuple)
    stack: list = [(module, 0, None)]
    push = stack.append
    while stack:
        node, depth, root = stack.pop()
        if isinstance(node, tuple):
            for item in node:
                if isinstance(item, branches):
                    push((item, depth, root))
            continue
        if isinstance(node, n.Expr):
            depth, root = depth + 1, root or node
            if depth > MAX_EXPRESSION_DEPTH:
                return root.span
        names = _FIELDS.get(type(node))
        if names is None:
            names = _FIELDS[type(node)] = tuple(f.name for f in fields(node) if f.compare)
        for name in names:
            value = getattr(node, name)
            if isinstance(value, branches):
                push((value, depth, root))
    return None


def build_expression(tree: Tree, file: str) -> n.Expr:
    return _FromTree(_Builder(file)).transform(tree)

