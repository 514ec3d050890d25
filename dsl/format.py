"""Print a syntax tree back as canonical scenario text: what `populace fmt` writes.

In: a nodes.Module (and, to keep comments, the text it was parsed from). Out: text with 2-space
indentation, one item per line, single spaces around `=`, a blank line between top-level
declarations, numbers spelled as the user wrote them, strings re-quoted canonically and the fewest
parentheses the grammar's precedence allows. Parsing the output gives a tree equal to the input's,
and formatting the output again changes nothing.

Comments are not in the tree: they are found by scanning the source text, then placed by line.
A comment on its own line stays before the item that follows it; a comment at the end of a line
stays at the end of that item's line; comments inside a wrapped expression (which the formatter
joins onto one line) move to just before that item, so none is ever lost.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import nodes as n
from .build import escape_text, quote_string

INDENT = "  "

# Binding strength, loosest first (populace.lark's expression rules, top to bottom).
_PIPED, _IFEXP, _OR, _AND, _NOT, _COMPARE, _SUM, _PRODUCT, _UNARY, _POWER, _POSTFIX, _ATOM = range(12)
WIDTH = 100  # a longer line is wrapped after a comma or an operator (a newline there continues the line)
_BINARY = {
    "or": _OR, "and": _AND,
    "==": _COMPARE, "!=": _COMPARE, "<": _COMPARE, "<=": _COMPARE, ">": _COMPARE, ">=": _COMPARE,
    "in": _COMPARE, "not in": _COMPARE,
    "+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT, "//": _PRODUCT, "%": _PRODUCT, "**": _POWER,
}

# Words the grammar spells as keywords; a record key with one of these names is quoted to be safe.
_KEYWORDS = frozenset(
    "scenario import model persona agent population group environment workflow param extends memory state "
    "last x by as repeat for in if else stop when break ask where using tell from broadcast to let record "
    "or and not true false none reuse per regroup snapshot order clip verbatim".split()
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A percent literal is only lexed as one when none of these follows it (populace.lark, PERCENT).
_AFTER_PERCENT = re.compile(r"[ \t]*[A-Za-z0-9_(\[\-\"]")


def format_source(text: str, file: str) -> str:
    """Parse `text` and print it canonically, comments kept; raise DiagnosticError if it does not parse."""
    from .diagnostics import DiagnosticError
    from .load import parse_source  # load imports build, which this module imports too: import at call time

    text = text.removeprefix("\ufeff")
    module, diagnostics = parse_source(text, file)
    if module is None:
        raise DiagnosticError(diagnostics, {file: text})
    return format_module(module, text)


def format_module(module: n.Module, source: str | None = None) -> str:
    """Print `module` canonically; with its `source`, keep the comments found there."""
    printer = _Printer(_scan_comments(source) if source else [], source or "")
    printer.module(module)
    return "\n".join(printer.lines).rstrip("\n") + "\n" if printer.lines else ""


# ----------------------------------------------------------------- comments
@dataclass(frozen=True, slots=True)
class Comment:
    line: int
    column: int
    text: str
    own_line: bool  # nothing but whitespace before it on its line


def _scan_comments(source: str) -> list[Comment]:
    """Every `# ...` outside strings, in source order."""
    comments, i, line, line_start, size = [], 0, 1, 0, len(source)
    while i < size:
        ch = source[i]
        if ch == "\n":
            i += 1
            line, line_start = line + 1, i
        elif ch == "#":
            end = source.find("\n", i)
            end = size if end < 0 else end
            own = source[line_start:i].strip() == ""
            comments.append(Comment(line, i - line_start + 1, source[i:end].rstrip(), own))
            i = end
        elif ch == '"':
            quote = '"""' if source.startswith('"""', i) else '"'
            i += len(quote)
            while i < size and not source.startswith(quote, i):
                if source[i] == "\\":
                    i += 1
                elif source[i] == "\n":
                    if quote == '"':
                        break  # an unclosed string ends at the line; the parser reports it
                    line, line_start = line + 1, i + 1
                i += 1
            if i < size and source.startswith(quote, i):
                i += len(quote)
        else:
            i += 1
    return comments


# ----------------------------------------------------------------- printer
def _start(node) -> tuple[int, int]:
    return (node.span.line, node.span.column)


class _Printer:
    """Walks the tree once, appending output lines and the comments that fall before each item."""

    def __init__(self, comments: list[Comment], source: str):
        self.lines: list[str] = []
        self.comments = comments
        self.next = 0
        self.blank = [not line.strip() for line in source.split("\n")]
        self.source_lines = source.split("\n")
        self.last_line = 0  # the last source line already printed (to keep the user's blank lines)
        self.indent = ""
        self.headers: list[tuple[int, bool]] = []  # open blocks: (index of the header line, has a comment)

    # ---------------------------------------------------------- comment placement
    def _pending(self) -> Comment | None:
        return self.comments[self.next] if self.next < len(self.comments) else None

    def _blank_between(self, after: int, before: int) -> bool:
        return any(self.blank[i - 1] for i in range(after + 1, before) if 0 < i <= len(self.blank))

    def _open_line(self, source_line: int) -> None:
        """Before printing what starts at `source_line`: keep one blank line if the source had one."""
        just_opened = self.headers and self.headers[-1][0] == len(self.lines) - 1
        if self.last_line and not just_opened and self._blank_between(self.last_line, source_line):
            if self.lines and self.lines[-1] != "":
                self.lines.append("")

    def leading(self, before: tuple[int, int]) -> None:
        """Print, on their own lines, the comments that come before position `before`."""
        c = self._pending()
        while c is not None and (c.line, c.column) < before:
            self._open_line(c.line)
            self.lines.append(self.indent + c.text)
            self.last_line = max(self.last_line, c.line)
            self.next += 1
            c = self._pending()

    def trailing(self, line: int) -> str:
        """The end-of-line comment on source `line`, spelled to append to the output line; or ""."""
        c = self._pending()
        if c is None or c.own_line or c.line != line:
            return ""
        self.next += 1
        return "  " + c.text

    def trailing_before(self, limit: tuple[int, int]) -> str:
        """The next comment if it ends a line before `limit` (a block header's comment); or ""."""
        c = self._pending()
        if c is None or c.own_line or (c.line, c.column) >= limit:
            return ""
        self.next += 1
        return "  " + c.text

    def item(self, node, text: str) -> None:
        """One line-level item: its leading comments, its text (maybe several lines), its trailing comment."""
        has_span = node.span is not n.NO_SPAN
        end_line = node.span.end_line
        if has_span:
            self.leading(_start(node))
            self._open_line(node.span.line)
            self.leading((end_line, 0))  # comments inside a wrapped item go before it
        rows = text.split("\n")
        rows[0] = self.indent + rows[0]
        if len(rows) == 1:  # a row of a triple-quoted string is text, not code: never wrapped
            rows = wrap(rows[0], self.indent + INDENT)
        if has_span:
            rows[-1] += self.trailing(end_line)
            self.last_line = max(self.last_line, end_line)
        self.lines.extend(rows)

    def open_block(self, node, header: str, first_child: tuple[int, int] | None, close: tuple[int, int]) -> None:
        """`header {` with its end-of-line comment; the caller then prints the children one level deeper."""
        if node.span is not n.NO_SPAN:
            self.leading(_start(node))
            self._open_line(node.span.line)
            self.last_line = max(self.last_line, node.span.line)
        comment = self.trailing_before(first_child or close)
        self.lines.append(self.indent + header + " {" + comment)
        self._enter(bool(comment))

    def continue_block(self, header: str, first_child: tuple[int, int] | None, close: tuple[int, int]) -> None:
        """` else [if c] {` on the line of the previous branch's `}`."""
        comment = self.trailing_before(first_child or close)
        self.lines[-1] += f" {header} {{" + comment
        self._enter(bool(comment))

    def _enter(self, has_comment: bool) -> None:
        self.headers.append((len(self.lines) - 1, has_comment))
        self.indent += INDENT

    def close_block(self, close: tuple[int, int]) -> None:
        """Comments left before `}`, then `}`; an empty block stays on its header's line as `{}`."""
        self.leading(close)
        header_index, has_comment = self.headers.pop()
        self.indent = self.indent[: -len(INDENT)]
        if header_index == len(self.lines) - 1 and not has_comment:
            self.lines[-1] += "}"
        else:
            self.lines.append(self.indent + "}")
        self.last_line = max(self.last_line, close[0])

    def close_trailing(self, close_line: int) -> None:
        self.lines[-1] += self.trailing(close_line)

    # ---------------------------------------------------------- declarations
    def module(self, module: n.Module) -> None:
        previous = None
        for decl in module.decls:
            if previous is not None and not (isinstance(previous, n.Import) and isinstance(decl, n.Import)
                                             and not self._blank_between(previous.span.end_line, decl.span.line)):
                self.lines.append("")
            self.last_line = 0 if previous is None else self.last_line
            self.decl(decl)
            previous = decl
        c = self._pending()
        if c is not None:
            if self.lines:
                self.lines.append("")
            self.last_line = 0
            self.leading((10**12, 0))

    def decl(self, decl) -> None:
        method = getattr(self, "decl_" + type(decl).__name__)
        method(decl)

    def _block_decl(self, decl, header: str, children: list, close: tuple[int, int] | None = None) -> None:
        """A `header { child... }` declaration; `children` are (node, print function) pairs."""
        close = close or (decl.span.end_line, decl.span.end_column - 1)
        first = _start(children[0][0]) if children and children[0][0].span is not n.NO_SPAN else None
        self.open_block(decl, header, first, close)
        for node, show in children:
            show(node)
        self.close_block(close)
        self.close_trailing(close[0])

    def decl_Import(self, decl: n.Import) -> None:
        self.item(decl, "import " + quote_string(decl.path))

    def decl_ScenarioDecl(self, decl: n.ScenarioDecl) -> None:
        settings, params = iter(decl.settings), iter(decl.params)
        children = []
        for entry in decl.order:
            if entry.startswith("param:"):
                children.append((next(params), self.param))
            else:
                children.append((next(settings), self.setting))
        self._block_decl(decl, f"scenario {decl.name}", children)

    def decl_ModelDecl(self, decl: n.ModelDecl) -> None:
        self._block_decl(decl, f"model {decl.name}", [(s, self.setting) for s in decl.settings])

    def decl_PersonaDecl(self, decl: n.PersonaDecl) -> None:
        self._block_decl(decl, f"persona {decl.name}", [(f, self.persona_field) for f in decl.fields])

    def decl_AgentDecl(self, decl: n.AgentDecl) -> None:
        settings, states = iter(decl.settings), iter(decl.state)
        children = []
        for entry in decl.order:
            if entry == "memory":
                children.append((decl.memory, self.memory))
            elif entry.startswith("state:"):
                children.append((next(states), self.state))
            else:
                children.append((next(settings), self.setting))
        header = f"agent {decl.name}" + (f" extends {decl.extends}" if decl.extends else "")
        self._block_decl(decl, header, children)

    def decl_PopulationDecl(self, decl: n.PopulationDecl) -> None:
        size = self.expr(decl.size)
        if decl.agent is not None:
            kind = decl.agent
        else:
            kind = "{ " + ", ".join(f"{s.agent}: {self.expr(s.share)}" for s in decl.mixture) + " }"
        self.item(decl, f"population {decl.name} = {_guard(size, ' x')} x {kind}")

    def decl_GroupDecl(self, decl: n.GroupDecl) -> None:
        self.item(decl, f"group {decl.population} by {_guard(self.expr(decl.by), ' as')} as {decl.name}")

    def decl_EnvironmentDecl(self, decl: n.EnvironmentDecl) -> None:
        header = f"environment {decl.name}"
        if decl.kind is not None:
            header += f" : {decl.kind}({self.args(decl.kind_args)})"
        if not decl.has_body:
            self.item(decl, header)
            return
        self._block_decl(decl, header, [(f, self.env_field) for f in decl.fields])

    def decl_WorkflowDecl(self, decl: n.WorkflowDecl) -> None:
        self.block_stmt(decl, "workflow", decl.body)

    # ---------------------------------------------------------- declaration items
    def setting(self, s: n.Setting) -> None:
        self.item(s, f"{s.name} = {self.expr(s.value)}")

    def param(self, p: n.Param) -> None:
        typed = f": {self.type(p.type)}" if p.type is not None else ""
        self.item(p, f"param {p.name}{typed} = {self.expr(p.default)}")

    def memory(self, value: n.Expr) -> None:
        self.item(value, f"memory = last {self.expr(value)}")

    def state(self, s: n.StateField) -> None:
        clip = " clip" if s.clip else ""
        self.item(s, f"state {s.name}: {self.type(s.type)}{clip} = {self.expr(s.default)}")

    def env_field(self, f: n.EnvField) -> None:
        typed = f": {self.type(f.type)}" if f.type is not None else ""
        self.item(f, f"{f.name}{typed} = {self.expr(f.value)}")

    def persona_field(self, f: n.PersonaField) -> None:
        reuse = f" reuse per ({', '.join(f.reuse_per)})" if f.reuse_per else ""
        if not f.sampled:
            self.item(f, f"{f.name} = {self.expr(f.value)}")
            return
        value = self.expr(f.value)
        if f.cases is None:
            self.item(f, f"{f.name} ~ {_guard(value, reuse)}{reuse}")
            return
        close = self._close_brace_after(f.cases[-1].span)
        self.open_block(f, f"{f.name} ~ {value}", _start(f.cases[0]), close)
        for case in f.cases:
            self.item(case, f"{case.key_text}: {self.expr(case.value)}")
        self.close_block(close)
        self.lines[-1] += reuse
        self.close_trailing(f.span.end_line)

    def _close_brace_after(self, span: n.Span) -> tuple[int, int]:
        """Where the `}` after `span` is, skipping separators and comments (for `by(...) { }` tables)."""
        if span is n.NO_SPAN:
            return (0, 0)
        line, column = span.end_line, span.end_column
        while line <= len(self.source_lines):
            rest = self.source_lines[line - 1][column - 1:]
            stripped = rest.lstrip(" \t\f\r,")
            if stripped.startswith("}"):
                return (line, column + len(rest) - len(stripped))
            if stripped and not stripped.startswith("#"):
                break
            line, column = line + 1, 1
        return (line, column)

    # ---------------------------------------------------------- workflow
    def _children(self, block: n.Block) -> tuple[tuple[int, int] | None, tuple[int, int]]:
        """Where a block's first statement starts (None if empty) and where its `}` is."""
        first = _start(block.body[0]) if block.body and block.body[0].span is not n.NO_SPAN else None
        return first, (block.span.end_line, block.span.end_column - 1)

    def block_stmt(self, node, header: str, block: n.Block) -> None:
        first, close = self._children(block)
        self.open_block(node, header, first, close)
        for stmt in block.body:
            self.stmt(stmt)
        self.close_block(close)

    def stmt(self, s: n.Stmt) -> None:
        getattr(self, "stmt_" + type(s).__name__)(s)

    def stmt_Repeat(self, s: n.Repeat) -> None:
        count = self.expr(s.count)
        header = f"repeat {_guard(count, ' as')} as {s.var}" if s.var else f"repeat {count}"
        self.block_stmt(s, header, s.body)
        self.close_trailing(s.body.span.end_line)

    def stmt_For(self, s: n.For) -> None:
        self.block_stmt(s, f"for {s.var} in {self.expr(s.iterable)}", s.body)
        self.close_trailing(s.body.span.end_line)

    def stmt_If(self, s: n.If) -> None:
        (test, body), *others = s.branches
        self.block_stmt(s, f"if {self.expr(test)}", body)
        chain = [(f"else if {self.expr(t)}", b) for t, b in others]
        if s.orelse is not None:
            chain.append(("else", s.orelse))
        for header, block in chain:
            first, close = self._children(block)
            self.continue_block(header, first, close)
            for stmt in block.body:
                self.stmt(stmt)
            self.close_block(close)
        final = s.orelse or s.branches[-1][1]
        self.close_trailing(final.span.end_line)

    def stmt_Stop(self, s: n.Stop) -> None:
        self.item(s, f"{'stop' if s.scope == 'run' else 'break'} when {self.expr(s.condition)}")

    def stmt_Ask(self, s: n.Ask) -> None:
        text = f"ask {s.population}" + (" in order" if s.in_order else "")
        if s.where is not None:
            text += f" where {_guard(self.expr(s.where), ' x')}"
        if s.model is not None:
            text += f" using {s.model}"
        if s.verbatim:
            text += " verbatim"
        text += f" {self.template(s.prompt)} -> {s.output.name}: {self.type(s.output.type)}"
        self.item(s, text)

    def stmt_Tell(self, s: n.Tell) -> None:
        text = f"tell {_guard(self.expr(s.target), ' x')}"
        if s.sender is not None:
            text += f" from {s.sender}"
        if s.where is not None:
            text += f" where {_guard(self.expr(s.where), ' x')}"
        self.item(s, f"{text} {self.template(s.message)}")

    def stmt_Broadcast(self, s: n.Broadcast) -> None:
        to = f" to {s.population}" if s.population is not None else ""
        self.item(s, f"broadcast{to} {self.template(s.message)}")

    def stmt_Let(self, s: n.Let) -> None:
        self.item(s, f"let {s.name} = {self.expr(s.value)}")

    def stmt_Assign(self, s: n.Assign) -> None:
        value = self.expr(s.value)
        where = ""
        if s.where is not None:
            value, where = _guard(value, " x"), f" where {self.expr(s.where)}"
        self.item(s, f"{self.expr(s.target, _POSTFIX)} {s.op} {value}{where}")

    def stmt_Record(self, s: n.Record) -> None:
        def spelled(items):
            return ", ".join((f"{i.name} = " if i.name is not None else "") + self.expr(i.value) for i in items)

        table = f"{quote_string(s.table)} " if s.table is not None else ""
        by = f" by {spelled(s.by)}" if s.by else ""
        self.item(s, f"record {table}{spelled(s.items)}{by}")

    def stmt_Regroup(self, s: n.Regroup) -> None:
        self.item(s, f"regroup {s.group}")

    def stmt_Snapshot(self, s: n.Snapshot) -> None:
        self.item(s, f"snapshot {s.population}")

    def stmt_CallStmt(self, s: n.CallStmt) -> None:
        self.item(s, self.expr(s.call))

    # ---------------------------------------------------------- types
    def type(self, t: n.TypeExpr) -> str:
        if t.form == "call":
            return f"{t.name}({self.args(t.args)})"
        if t.form == "generic":
            return f"{t.name}[{self.type(t.item)}]"
        if t.form == "record":
            return "{ " + ", ".join(f"{name}: {self.type(ft)}" for name, ft in t.fields) + " }"
        if t.low is not None:
            return f"{t.name} in {_guard(self.expr(t.low, _SUM), '..')}..{self.expr(t.high, _SUM)}"
        return t.name

    # ---------------------------------------------------------- expressions
    def expr(self, e: n.Expr, need: int = _PIPED) -> str:
        """`e` as text, in parentheses if it binds more loosely than its place requires (`need`)."""
        text, strength = self._expr(e)
        return f"({text})" if strength < need else text

    def _expr(self, e: n.Expr) -> tuple[str, int]:
        if isinstance(e, n.Literal):
            if e.kind == "str":
                return self.plain_string(e.value), _ATOM
            return e.text or _spell_literal(e), _ATOM
        if isinstance(e, n.Template):
            return self.template(e), _ATOM
        if isinstance(e, n.Name):
            return e.id, _ATOM
        if isinstance(e, n.Attr):
            return f"{self.expr(e.value, _POSTFIX)}.{e.attr}", _POSTFIX
        if isinstance(e, n.Index):
            return f"{_guard(self.expr(e.value, _POSTFIX), '[')}[{self.expr(e.index)}]", _POSTFIX
        if isinstance(e, n.Call):
            return f"{_guard(self.expr(e.func, _POSTFIX), '(')}({self.args(e.args)})", _POSTFIX
        if isinstance(e, n.BinOp):
            strength = _BINARY[e.op]
            if e.op == "**":  # right-associative: postfix ** unary
                left, right = self.expr(e.left, _POSTFIX), self.expr(e.right, _UNARY)
            elif strength == _COMPARE:  # not associative: sum OP sum
                left, right = self.expr(e.left, _SUM), self.expr(e.right, _SUM)
            else:  # left-associative
                left, right = self.expr(e.left, strength), self.expr(e.right, strength + 1)
            return f"{_guard(left, ' ' + e.op)} {e.op} {right}", strength
        if isinstance(e, n.UnaryOp):
            if e.op == "not":
                return f"not {self.expr(e.operand, _NOT)}", _NOT
            return f"-{self.expr(e.operand, _UNARY)}", _UNARY
        if isinstance(e, n.Piped):
            args = f"({self.args(e.args)})" if e.args else ""
            return f"{self.expr(e.value, _PIPED)} | {e.name}{args}", _PIPED
        if isinstance(e, n.Filtered):  # only inside an aggregate's parentheses, where any expression fits
            return f"{self.expr(e.value)} where {self.expr(e.where)}", _PIPED
        if isinstance(e, n.IfExp):
            then = _guard(self.expr(e.then, _OR), " if")
            test = _guard(self.expr(e.test, _OR), " else")
            return f"{then} if {test} else {self.expr(e.orelse, _IFEXP)}", _IFEXP
        if isinstance(e, n.ListLit):
            return "[" + ", ".join(self.expr(i) for i in e.items) + "]", _ATOM
        if isinstance(e, n.RecordLit):
            if not e.fields:
                return "{}", _ATOM
            return "{" + ", ".join(f"{_record_key(k)}: {self.expr(v)}" for k, v in e.fields) + "}", _ATOM
        raise TypeError(f"cannot print {type(e).__name__}")

    def args(self, args) -> str:
        out = []
        for a in args:
            if a.name is not None:
                out.append(f"{a.name} = {self.expr(a.value)}")
            elif a.key is not None:
                out.append(f"{self.expr(a.key)}: {self.expr(a.value)}")
            else:
                out.append(self.expr(a.value))
        return ", ".join(out)

    # ---------------------------------------------------------- strings
    def plain_string(self, value: str) -> str:
        """A string without interpolations: triple-quoted when it spans lines and reads back the same."""
        if "\n" in value:
            long = self._long_string([value])
            if long is not None:
                return long
        return quote_string(value)

    def template(self, t) -> str:
        if isinstance(t, n.Literal):
            return self.plain_string(t.value)
        if t.long:
            long = self._long_string(list(t.parts))
            if long is not None:
                return long
        return '"' + self._template_body(t.parts, long=False) + '"'

    def _template_body(self, parts, long: bool) -> str:
        out = []
        for i, part in enumerate(parts):
            if isinstance(part, str):
                following = "{" if i + 1 < len(parts) else ""
                out.append(_escape_long(part, following) if long else escape_text(part, following))
            else:
                out.append("{{ " + self._interpolation(part) + " }}")
        return "".join(out)

    def _interpolation(self, e: n.Expr) -> str:
        text = self.expr(e)
        # The interpolation ends at the first `}}`: keep nested record braces apart.
        while "}}" in text:
            text = text.replace("}}", "} }")
        return text

    def _long_string(self, parts: list) -> str | None:
        """Triple quotes around the lines, one level deeper than the statement; or None if that
        would not read back as the same parts (dedent strips text's own common indentation)."""
        body = self._template_body(parts, long=True)
        inner = self.indent + INDENT
        lines = [inner + line if line.strip() else "" for line in body.split("\n")]
        text = '"""\n' + "\n".join(lines) + "\n" + self.indent + '"""'
        return text if _reads_back(text, parts) else None


def wrap(line: str, indent: str, width: int = WIDTH) -> list[str]:
    """A line over `width` columns as several: broken after the last `, ` (else after an operator)
    that fits, outside strings; a newline there continues the line, so the text means the same.
    A line with no such place (one long string) stays as it is."""
    out = []
    while len(line) > width:
        cut = _break_at(line, width)
        if cut is None:
            break
        out.append(line[:cut].rstrip())
        line = indent + line[cut:].lstrip()
    out.append(line)
    return out


_OPERATORS = (" + ", " - ", " * ", " / ", " and ", " or ", " == ", " != ", " <= ", " >= ", " < ", " > ")


def _break_at(line: str, width: int) -> int | None:
    """Where to break `line`: just after a comma or an operator outside strings, the least nested
    one (a comma before an operator) that fits in `width`, the last of those; else the first one
    after `width`; None when there is none."""
    places = []  # (nesting depth, 0 for a comma / 1 for an operator, position after it)
    i, end, depth = 0, len(line), 0
    start = len(line) - len(line.lstrip())
    while i < end:
        if line.startswith('"""', i):
            close = line.find('"""', i + 3)
            if close < 0:
                return None  # a triple-quoted string runs on: leave the line alone
            i = close + 3
            continue
        ch = line[i]
        if ch == '"':
            j = i + 1
            while j < end and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            i = j + 1
            continue
        if ch == "#":
            break  # a trailing comment
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and i + 1 < end and line[i + 1] == " ":
            places.append((depth, 0, i + 1))
        elif ch == " " and i > start:
            for op in _OPERATORS:
                if line.startswith(op, i):
                    places.append((depth, 1, i + len(op) - 1))
                    break
        i += 1
    fitting = [p for p in places if p[2] <= width]
    if fitting:
        best = min(p[:2] for p in fitting)
        return [p for p in fitting if p[:2] == best][-1][2]
    return min(places)[2] if places else None


def _escape_long(text: str, following: str) -> str:
    """Like escape_text, for inside triple quotes: real line breaks; a `"` before another `"`
    is escaped so that three in a row never end the string early."""
    out = []
    for i, ch in enumerate(text):
        nxt = text[i + 1] if i + 1 < len(text) else following
        if ch == "\n":
            out.append("\n")
        elif ch == '"':
            out.append('\\"' if nxt == '"' else '"')
        else:
            out.append(escape_text(ch, nxt))
    return "".join(out)


def _reads_back(text: str, parts: list) -> bool:
    """Whether the triple-quoted `text` builds back to `parts`: checked with the builder itself,
    not assumed, because dedent has corner cases (tabs, text that is all indented)."""
    from lark import Token

    from .build import BuildError, _Builder

    token = Token("LONG_STRING", text, line=1, column=1, end_line=1, end_column=1)
    try:
        node = _Builder("<format>").template(token, allow_plain=True)
    except BuildError:
        return False
    got = [node.value] if isinstance(node, n.Literal) else list(node.parts)
    return got == list(parts)


def _guard(text: str, following: str) -> str:
    """Parenthesize `text` if it ends in a percent literal that `following` would make lex as `%`."""
    if text.endswith("%") and _AFTER_PERCENT.match(following):
        return f"({text})"
    return text


def _record_key(key: str) -> str:
    return key if _IDENTIFIER.match(key) and key not in _KEYWORDS else quote_string(key)


def _spell_literal(e: n.Literal) -> str:
    """A literal built by a compiler pass has no source text: spell its value."""
    if e.kind == "bool":
        return "true" if e.value else "false"
    if e.kind == "none":
        return "none"
    if e.kind == "percent":
        return f"{e.value * 100:g}%"
    if e.kind == "duration":
        return f"{e.value:g}s"
    if e.kind == "usd":
        return f"{e.value:g}usd"
    return repr(e.value)
