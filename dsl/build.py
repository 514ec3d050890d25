"""Turn Lark trees into dsl.nodes; the only module that sees lark.Tree.

In: a lark.Tree from dsl.parser (positions propagated) and the file name. Out: a nodes.Module, or
diagnostics for what the grammar accepts but the language does not (bad escapes, a bad `{{ }}`).
Strings holding `{{ ... }}` become Template nodes: each interpolation is parsed with the grammar's
`expr` start, and its span points inside the string, so an error there names the exact column.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import fields

from lark import Token, Transformer, Tree, v_args

from . import nodes as n
from .diagnostics import Diagnostic
from .nodes import Span

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


@v_args(meta=True)
class _Builder(Transformer):
    """Bottom-up: every method returns a node (or a small tuple the parent unpacks)."""

    def __init__(self, file: str, line_offset: int = 0, col_offset: int = 0):
        super().__init__()
        self.file = file
        self.line_offset = line_offset
        self.col_offset = col_offset
        self.diagnostics: list[Diagnostic] = []

    # -------------------------------------------------------------- positions
    def span(self, meta) -> Span:
        if getattr(meta, "empty", True):
            return n.NO_SPAN
        return self._pos(meta.line, meta.column, meta.end_line, meta.end_column)

    def tspan(self, tok: Token) -> Span:
        return self._pos(tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + len(tok))

    def _pos(self, line, col, end_line, end_col) -> Span:
        def shift(l, c):
            return l + self.line_offset, c + (self.col_offset if l == 1 else 0)

        line, col = shift(line, col)
        end_line, end_col = shift(end_line, end_col)
        return Span(file=self.file, line=line, column=col, end_line=end_line, end_column=end_col)

    # -------------------------------------------------------------- top level
    def start(self, meta, children):
        return [c for c in children if c is not None]

    def import_decl(self, meta, c):
        return n.Import(path=self.plain_string(c[0]), span=self.span(meta))

    def setting(self, meta, c):
        return n.Setting(name=str(c[0]), value=c[1], span=self.span(meta), name_span=self.tspan(c[0]))

    def param(self, meta, c):
        return n.Param(name=str(c[0]), type=c[1], default=c[2], span=self.span(meta), name_span=self.tspan(c[0]))

    def scenario(self, meta, c):
        items = c[1:]
        return n.ScenarioDecl(
            name=str(c[0]), name_span=self.tspan(c[0]), span=self.span(meta),
            settings=tuple(i for i in items if isinstance(i, n.Setting)),
            params=tuple(i for i in items if isinstance(i, n.Param)),
            order=tuple(("param:" if isinstance(i, n.Param) else "setting:") + i.name for i in items),
        )

    def model(self, meta, c):
        return n.ModelDecl(name=str(c[0]), name_span=self.tspan(c[0]), span=self.span(meta), settings=tuple(c[1:]))

    # -------------------------------------------------------------- personas
    def persona(self, meta, c):
        fields = []
        for item in c[1:]:
            if isinstance(item, n.Setting):
                item = n.PersonaField(name=item.name, value=item.value, sampled=False, span=item.span,
                                      name_span=item.name_span)
            fields.append(item)
        return n.PersonaDecl(name=str(c[0]), name_span=self.tspan(c[0]), span=self.span(meta), fields=tuple(fields))

    def sampled(self, meta, c):
        name, value, cases, reuse = c
        return n.PersonaField(name=str(name), value=value, sampled=True, cases=cases, reuse_per=reuse,
                              span=self.span(meta), name_span=self.tspan(name))

    def cases(self, meta, c):
        return tuple(c)

    def case(self, meta, c):
        key_tok, value = c
        key_text, key = self.case_key(key_tok)
        return n.Case(key=key, key_text=key_text, value=value, span=self.span(meta))

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

    def signed_number(self, meta, c):
        sign = "-" if len(c) == 2 else ""
        tok = c[-1]
        text = sign + str(tok)
        value = float(_number(text)) if tok.type == "FLOAT" else int(_number(text))
        return text, value

    def reuse(self, meta, c):
        return tuple(str(t) for t in c)

    # -------------------------------------------------------------- agents
    def agent(self, meta, c):
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
            name=str(name), name_span=self.tspan(name), span=self.span(meta),
            extends=str(extends) if extends is not None else None,
            extends_span=self.tspan(extends) if extends is not None else None,
            settings=tuple(settings), state=tuple(state), memory=memory, order=tuple(order),
        )

    def extends(self, meta, c):
        return c[0]

    def memory(self, meta, c):
        return c[0]

    def state(self, meta, c):
        return n.StateField(name=str(c[0]), type=c[1], default=c[2], span=self.span(meta), name_span=self.tspan(c[0]))

    # -------------------------------------------------------------- populations
    def population(self, meta, c):
        name, size, kind = c
        if isinstance(kind, Token):
            return n.PopulationDecl(name=str(name), name_span=self.tspan(name), span=self.span(meta), size=size,
                                    agent=str(kind), agent_span=self.tspan(kind))
        return n.PopulationDecl(name=str(name), name_span=self.tspan(name), span=self.span(meta), size=size,
                                mixture=kind)

    def mixture(self, meta, c):
        return tuple(c)

    def share(self, meta, c):
        return n.Share(agent=str(c[0]), share=c[1], span=self.span(meta))

    def group_decl(self, meta, c):
        population, by, name = c
        return n.GroupDecl(name=str(name), name_span=self.tspan(name), span=self.span(meta),
                           population=str(population), population_span=self.tspan(population), by=by)

    # -------------------------------------------------------------- environments
    def environment(self, meta, c):
        name, kind, body = c
        kind_name, kind_args, kind_span = (None, (), None) if kind is None else kind
        return n.EnvironmentDecl(
            name=str(name), name_span=self.tspan(name), span=self.span(meta), kind=kind_name,
            kind_args=kind_args, kind_span=kind_span, fields=body or (), has_body=body is not None,
        )

    def kind(self, meta, c):
        return str(c[0]), tuple(c[1] or ()), self.tspan(c[0])

    def env_body(self, meta, c):
        return tuple(c)

    def field(self, meta, c):
        return n.EnvField(name=str(c[0]), type=c[1], value=c[2], span=self.span(meta), name_span=self.tspan(c[0]))

    # -------------------------------------------------------------- workflow
    def workflow(self, meta, c):
        return n.WorkflowDecl(body=c[0], span=self.span(meta))

    def block(self, meta, c):
        return n.Block(body=tuple(c), span=self.span(meta))

    def repeat(self, meta, c):
        count, var, body = c
        return n.Repeat(count=count, var=str(var) if var is not None else None, body=body, span=self.span(meta))

    def for_stmt(self, meta, c):
        return n.For(var=str(c[0]), iterable=c[1], body=c[2], span=self.span(meta))

    def if_stmt(self, meta, c):
        test, body, *rest = c
        orelse = rest.pop() if rest and (rest[-1] is None or isinstance(rest[-1], n.Block)) else None
        branches = [(test, body)] + [r for r in rest]
        return n.If(branches=tuple(branches), orelse=orelse, span=self.span(meta))

    def elif_(self, meta, c):
        return (c[0], c[1])

    def else_(self, meta, c):
        return c[0]

    def stop(self, meta, c):
        return n.Stop(condition=c[0], scope="run", span=self.span(meta))

    def break_stmt(self, meta, c):
        return n.Stop(condition=c[0], scope="loop", span=self.span(meta))

    def ask(self, meta, c):
        population, where, using, prompt, _arrow, output = c
        model, model_span = (None, None) if using is None else using
        return n.Ask(population=str(population), population_span=self.tspan(population), where=where,
                     model=model, model_span=model_span, prompt=self.template(prompt), output=output,
                     span=self.span(meta))

    def where(self, meta, c):
        return c[0]

    def using(self, meta, c):
        return str(c[0]), self.tspan(c[0])

    def output(self, meta, c):
        return n.Output(name=str(c[0]), type=c[1], span=self.span(meta), name_span=self.tspan(c[0]))

    def tell(self, meta, c):
        target, sender, where, message = c
        sender_name, sender_span = (None, None) if sender is None else sender
        return n.Tell(target=target, sender=sender_name, sender_span=sender_span, where=where,
                      message=self.template(message), span=self.span(meta))

    def from_(self, meta, c):
        return str(c[0]), self.tspan(c[0])

    def broadcast(self, meta, c):
        population, message = c
        return n.Broadcast(population=str(population) if population is not None else None,
                           population_span=self.tspan(population) if population is not None else None,
                           message=self.template(message), span=self.span(meta))

    def let(self, meta, c):
        return n.Let(name=str(c[0]), value=c[1], span=self.span(meta), name_span=self.tspan(c[0]))

    def assign(self, meta, c):
        target, op, value, where = c
        return n.Assign(target=target, op=str(op), value=value, where=where, span=self.span(meta))

    def assign_eq(self, meta, c):
        target, value, where = c
        return n.Assign(target=target, op="=", value=value, where=where, span=self.span(meta))

    def record(self, meta, c):
        return n.Record(items=tuple(c), span=self.span(meta))

    def record_item(self, meta, c):
        return n.RecordItem(name=str(c[0]) if c[0] is not None else None, value=c[1], span=self.span(meta))

    def call_stmt(self, meta, c):
        return n.CallStmt(call=c[0], span=self.span(meta))

    # -------------------------------------------------------------- types
    def simple_type(self, meta, c):
        name, rng = c
        low, high = rng if rng is not None else (None, None)
        return n.TypeExpr(name=str(name), low=low, high=high, span=self.span(meta))

    def range(self, meta, c):
        return c[0], c[2]

    def call_type(self, meta, c):
        return n.TypeExpr(name=str(c[0]), args=tuple(c[1] or ()), form="call", span=self.span(meta))

    def generic_type(self, meta, c):
        return n.TypeExpr(name=str(c[0]), item=c[1], form="generic", span=self.span(meta))

    def record_type(self, meta, c):
        return n.TypeExpr(name="record", fields=tuple(c), form="record", span=self.span(meta))

    def type_field(self, meta, c):
        return (str(c[0]), c[1])

    # -------------------------------------------------------------- expressions
    def ifexp(self, meta, c):
        return n.IfExp(then=c[0], test=c[1], orelse=c[2], span=self.span(meta))

    def binop(self, meta, c):
        left, op, right = c
        return n.BinOp(op=str(op), left=left, right=right, span=self.span(meta))

    def not_in(self, meta, c):
        return n.BinOp(op="not in", left=c[0], right=c[3], span=self.span(meta))

    def unop(self, meta, c):
        return n.UnaryOp(op=str(c[0]), operand=c[1], span=self.span(meta))

    def attr(self, meta, c):
        return n.Attr(value=c[0], attr=str(c[1]), span=self.span(meta))

    def index(self, meta, c):
        return n.Index(value=c[0], index=c[1], span=self.span(meta))

    def call(self, meta, c):
        return n.Call(func=c[0], args=tuple(c[1] or ()), span=self.span(meta))

    def args(self, meta, c):
        return tuple(a if isinstance(a, n.Arg) else n.Arg(value=a, span=a.span) for a in c)

    def kwarg(self, meta, c):
        return n.Arg(name=str(c[0]), value=c[1], span=self.span(meta))

    def pair(self, meta, c):
        return n.Arg(key=c[0], value=c[1], span=self.span(meta))

    def int_lit(self, meta, c):
        return n.Literal(value=int(_number(c[0])), kind="int", text=str(c[0]), span=self.span(meta))

    def float_lit(self, meta, c):
        return n.Literal(value=float(_number(c[0])), kind="float", text=str(c[0]), span=self.span(meta))

    def percent_lit(self, meta, c):
        return n.Literal(value=float(_number(c[0][:-1])) / 100, kind="percent", text=str(c[0]), span=self.span(meta))

    def duration_lit(self, meta, c):
        text = str(c[0])
        for unit, factor in (("ms", 0.001), ("min", 60.0), ("h", 3600.0), ("s", 1.0)):
            if text.endswith(unit):
                return n.Literal(value=float(_number(text[: -len(unit)])) * factor, kind="duration", text=text,
                                 span=self.span(meta))
        raise AssertionError(text)  # the grammar's DURATION terminal admits only these units

    def string_lit(self, meta, c):
        return self.template(c[0], allow_plain=True)

    def true_lit(self, meta, c):
        return n.Literal(value=True, kind="bool", text="true", span=self.span(meta))

    def false_lit(self, meta, c):
        return n.Literal(value=False, kind="bool", text="false", span=self.span(meta))

    def none_lit(self, meta, c):
        return n.Literal(value=None, kind="none", text="none", span=self.span(meta))

    def name(self, meta, c):
        return n.Name(id=str(c[0]), span=self.span(meta))

    def list_lit(self, meta, c):
        return n.ListLit(items=tuple(x for x in c if x is not None), span=self.span(meta))

    def tuple_lit(self, meta, c):
        return n.ListLit(items=tuple(x for x in c if x is not None), span=self.span(meta))

    def record_lit(self, meta, c):
        return n.RecordLit(fields=tuple(c), span=self.span(meta))

    def empty_record(self, meta, c):
        return n.RecordLit(fields=(), span=self.span(meta))

    def record_entry(self, meta, c):
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
        from .parser import parse_text  # parser imports nothing from here; the cycle is only at call time

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
        sub = _Builder(self.file, line_offset=line - 1 + self.line_offset,
                       col_offset=col - 1 + (self.col_offset if line == 1 else 0))
        return sub.transform(tree)


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


def build_module(tree: Tree, file: str) -> tuple[n.Module | None, list[Diagnostic]]:
    builder = _Builder(file)
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
    stack: list = [(module, 0, None)]
    while stack:
        node, depth, root = stack.pop()
        if isinstance(node, tuple):
            stack.extend((item, depth, root) for item in node)
            continue
        if not isinstance(node, n.Node):
            continue
        if isinstance(node, n.Expr):
            depth, root = depth + 1, root or node
            if depth > MAX_EXPRESSION_DEPTH:
                return root.span
        names = _FIELDS.get(type(node))
        if names is None:
            names = _FIELDS[type(node)] = tuple(f.name for f in fields(node) if f.compare)
        stack.extend((getattr(node, name), depth, root) for name in names)
    return None


def build_expression(tree: Tree, file: str) -> n.Expr:
    return _Builder(file).transform(tree)

